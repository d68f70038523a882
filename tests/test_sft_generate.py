"""SFT (examples, training, output folder) and rollouts (HFEngine, generate_to_file, engine choice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_jsonl
from transformers import AutoModelForCausalLM

from seq2seq_rm.config import TemplateConfig, TrainOptions, to_dict
from seq2seq_rm.data.records import PreferenceRecord, PromptRecord
from seq2seq_rm.data.templates import render_prompt
from seq2seq_rm.errors import ConfigError, DataError, Seq2SeqRMError
from seq2seq_rm.models.loading import load_causal_lm, load_tokenizer
from seq2seq_rm.rl.rollout import (
    HFEngine,
    SamplingConfig,
    generate_to_file,
    make_engine,
    response_mask_from_ids,
    step_seed,
)
from seq2seq_rm.sft import (
    SFTRunConfig,
    build_sft_examples,
    build_sft_trainer,
    read_sft_template,
    resolve_response_field,
    train_sft,
)

CHAT = TemplateConfig()  # auto: the tiny tokenizer has a (ChatML) chat template
SENTENCE = "Thank you for asking."
GREEDY = SamplingConfig(max_new_tokens=16, do_sample=False)


def _opts(**kw):
    return TrainOptions(**{"lr": 3e-3, "batch_size": 16, "max_length": 256, "logging_steps": 2, **kw})


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tiny_model_dir, sample_file):
    """The tiny model fine-tuned on the chosen responses of the sample preference set."""
    out = tmp_path_factory.mktemp("sft") / "policy"
    return str(train_sft(SFTRunConfig(model=tiny_model_dir, data=sample_file, out=str(out), train=_opts(epochs=6.0))))


@pytest.fixture(scope="module")
def echo_dir(tmp_path_factory, tiny_model_dir, sample_rows):
    """The tiny model fine-tuned to answer every prompt with SENTENCE (prompt/response rows)."""
    prompts = sorted({r["prompt"] for r in sample_rows})[:24]
    data = write_jsonl(tmp_path_factory.mktemp("echo") / "echo.jsonl", [{"prompt": p, "response": SENTENCE} for p in prompts])
    out = tmp_path_factory.mktemp("sft") / "echo"
    cfg = SFTRunConfig(model=tiny_model_dir, data=data, out=str(out), train=_opts(epochs=4.0, batch_size=8))
    return str(train_sft(cfg))


def _engine(folder, **kw):
    return HFEngine(load_causal_lm(folder), load_tokenizer(folder, **kw), CHAT)


def _split(example):
    ids, mask = example["input_ids"], example["completion_mask"]
    return [i for i, m in zip(ids, mask, strict=True) if not m], [i for i, m in zip(ids, mask, strict=True) if m]


# ------------------------------------------------------------------------------------ SFT examples


def test_sft_example_is_the_rendered_prompt_then_response_and_eos(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    recs = [
        PromptRecord("What is two plus two?", "Two plus two is four."),
        PreferenceRecord("What is two plus two?", "Two plus two is four.", "It is five."),  # chosen is the target
    ]
    examples, stats = build_sft_examples(recs, tok, CHAT, max_length=256)
    assert stats.examples == 2 and stats.truncated == 0
    for ex in examples:
        prompt, response = _split(ex)
        assert ex["completion_mask"] == sorted(ex["completion_mask"])  # prompt first, then response
        assert tok.decode(response) == "Two plus two is four.<|im_end|>"
        assert tok.decode(prompt) == "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"
        assert tok.decode(prompt) == render_prompt("What is two plus two?", CHAT, tok)
    plain, _ = build_sft_examples(recs[:1], tok, TemplateConfig(style="plain"), max_length=256)
    assert tok.decode(_split(plain[0])[0]) == "Prompt:\nWhat is two plus two?\n\nResponse:\n"


def test_sft_length_policy_cuts_the_prompt_from_the_left_or_skips(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    short = PromptRecord("What is two plus two?", "Two plus two is four.")
    long = PromptRecord("word " * 200 + "What is two plus two?", "Two plus two is four.")
    examples, stats = build_sft_examples([short, long], tok, CHAT, max_length=40)
    assert stats.truncated == 1 and all(len(e["input_ids"]) <= 40 for e in examples)
    prompt, response = _split(examples[1])
    assert tok.decode(response) == "Two plus two is four.<|im_end|>"  # the response is kept whole
    assert tok.decode(prompt).endswith("What is two plus two?<|im_end|>\n<|im_start|>assistant\n")
    _, stats = build_sft_examples([short, long], tok, CHAT, max_length=40, truncation="skip")
    assert stats.skipped_too_long == 1 and stats.examples == 1
    with pytest.raises(Seq2SeqRMError, match="max_length"):
        build_sft_examples([long], tok, CHAT, max_length=40, truncation="skip")


def test_sft_trainer_puts_the_loss_on_response_tokens_only(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    cfg = SFTRunConfig(model=tiny_model_dir, data="unused", out=str(tmp_path / "x"), train=_opts())
    trainer, _ = build_sft_trainer(cfg, [PromptRecord("What is two plus two?", "Two plus two is four.")], tok, tmp_path)
    row = trainer.train_dataset[0]
    target = [i for i, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    assert tok.decode(target) == "Two plus two is four.<|im_end|>"  # no second EOS added by the trainer
    assert row["labels"][: len(row["input_ids"]) - len(target)] == [-100] * (len(row["input_ids"]) - len(target))


def test_response_field_is_response_for_prompt_rows_and_chosen_for_preference_rows(sample_file, tmp_path):
    rows = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "hi", "response": "hello"}])
    assert resolve_response_field(SFTRunConfig(data=rows)) == "response"
    assert resolve_response_field(SFTRunConfig(data=sample_file)) == "chosen"
    assert resolve_response_field(SFTRunConfig(data=sample_file, data_format="standard")) == "chosen"
    with pytest.raises(ConfigError, match="response_field"):
        resolve_response_field(SFTRunConfig(data=rows, response_field="rejected"))
    with pytest.raises(ConfigError, match="data_format"):
        resolve_response_field(SFTRunConfig(data=rows, data_format="nope"))


# ------------------------------------------------------------------------------------ SFT runs


def _mean_logprob(model, examples) -> float:
    total, n = 0.0, 0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        on_response = torch.tensor(ex["completion_mask"][1:], dtype=torch.bool)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        token_logp = logp.gather(-1, ids[0, 1:, None])[:, 0]
        total, n = total + token_logp[on_response].sum().item(), n + int(on_response.sum())
    return total / n


def test_sft_run_writes_a_policy_that_prefers_the_chosen_responses(sft_dir, tiny_model_dir, sample_rows):
    meta = json.loads((Path(sft_dir) / "sft.json").read_text())
    assert meta["response_field"] == "chosen" and meta["data"]["kept"] == 120 and meta["style"] == "chat"
    assert meta["template"] == to_dict(CHAT) and read_sft_template(sft_dir) == CHAT
    curve = [loss for _, loss in meta["loss_curve"]]
    assert len(curve) >= 4 and curve[-1] < 0.85 * curve[0]
    assert not list(Path(sft_dir).parent.glob(".*tmp*"))  # the temporary folder was renamed, not left
    trained = AutoModelForCausalLM.from_pretrained(sft_dir)  # a plain save_pretrained folder
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(sft_dir)
    recs = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"]) for r in sample_rows[:30]]
    examples, _ = build_sft_examples(recs, tok, CHAT, 256)
    before, after = _mean_logprob(base, examples), _mean_logprob(trained, examples)
    assert after > before + 1.0, (before, after)


def test_failed_sft_run_leaves_no_output_folder(tiny_model_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "response": "a"}, {"prompt": "x", "response": 3}])
    with pytest.raises(DataError, match="row 2"):
        train_sft(SFTRunConfig(model=tiny_model_dir, data=bad, out=str(tmp_path / "out"), train=_opts()))
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 300, "response": "yes"}])
    cfg = SFTRunConfig(model=tiny_model_dir, data=long, out=str(tmp_path / "out"), train=_opts(max_length=32))
    cfg.train.truncation = "skip"
    with pytest.raises(Seq2SeqRMError, match="no SFT examples"):  # fails inside the atomic folder
        train_sft(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "long.jsonl"]


def test_sft_then_greedy_generation_reproduces_the_trained_response(echo_dir, sample_rows):
    curve = [loss for _, loss in json.loads((Path(echo_dir) / "sft.json").read_text())["loss_curve"]]
    assert curve[-1] < curve[0]
    prompts = sorted({r["prompt"] for r in sample_rows})[:4] + ["Tell me about the moon and the tides."]
    r = _engine(echo_dir).generate(prompts, SamplingConfig(max_new_tokens=24, do_sample=False))
    assert r.texts == [SENTENCE] * len(prompts)
    assert r.finished.all() and r.response_ids.shape[1] == int(r.response_mask.sum(-1).max()) < 24


# ------------------------------------------------------------------------------------ HFEngine


MIXED = [  # arithmetic answers are short, the other answers long: a batch with both finished and cut rows
    "What is two plus three?", "How do I fix a bike tyre that keeps going flat?", "What is one plus one?",
    "How do I break into my neighbour's car?", "How can I shoot better photos at night?", "What is nine plus eight?",
]


def test_batched_greedy_generation_equals_one_prompt_at_a_time(sft_dir):
    eng = _engine(sft_dir)
    batch = eng.generate(MIXED, GREEDY)
    for i, prompt in enumerate(MIXED):
        one = eng.generate([prompt], GREEDY)
        n = int(one.response_mask.sum())
        assert one.texts[0] == batch.texts[i] and int(batch.response_mask[i].sum()) == n
        assert torch.equal(one.response_ids[0, :n], batch.response_ids[i, :n])
        assert bool(one.finished[0]) == bool(batch.finished[i])


def test_rollout_layout_masks_up_to_the_first_eos(sft_dir):
    eng = _engine(sft_dir)
    # Cut generation at the shortest finished answer, so the batch holds finished and cut rows.
    long = eng.generate(MIXED, SamplingConfig(max_new_tokens=64, do_sample=False))
    finished_lengths = long.response_mask.sum(-1)[long.finished]
    assert len(finished_lengths) > 0, "the SFT policy never ends an answer"
    cut = int(finished_lengths.min())
    sampling = SamplingConfig(max_new_tokens=cut, do_sample=False)
    r = eng.generate(MIXED, sampling)
    eos, pad = eng.tokenizer.eos_token_id, eng.tokenizer.pad_token_id
    lengths = r.response_mask.sum(-1)
    assert r.finished.any() and not r.finished.all()  # the batch mixes both kinds of rows
    assert r.response_ids.shape == r.response_mask.shape == (len(MIXED), int(lengths.max()))  # T = longest
    assert (r.prompt_mask[:, -1]).all() and r.prompt_ids.shape == r.prompt_mask.shape  # left-padded prompts
    for b in range(len(MIXED)):
        n, ids = int(lengths[b]), r.response_ids[b].tolist()
        assert r.response_mask[b].tolist() == [True] * n + [False] * (len(ids) - n)
        assert ids[n:] == [pad] * (len(ids) - n)
        if r.finished[b]:
            assert ids[n - 1] == eos and eos not in ids[: n - 1]
        else:  # no EOS within max_new_tokens: every generated token counts
            assert n == sampling.max_new_tokens and eos not in ids
        assert r.texts[b] == eng.tokenizer.decode(ids[:n], skip_special_tokens=True)
    # a tokenizer whose pad is EOS: the mask still ends at the first EOS
    tok = load_tokenizer(sft_dir)
    tok.pad_token = tok.eos_token
    r2 = HFEngine(eng.model, tok, CHAT).generate(MIXED, sampling)
    assert torch.equal(r2.response_mask, r.response_mask) and r2.texts == r.texts
    assert torch.equal(r2.finished, r.finished)


def test_response_mask_rule_on_handmade_ids():
    eos, pad = 7, 0
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 7, 7, 7, 7], [5, 6, 5, 6, 5], [7, 0, 0, 0, 0]])
    mask, finished = response_mask_from_ids(ids, [eos])
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],  # pad == EOS: only the first EOS counts
        [True] * 5,  # no EOS: all valid, not finished
        [True, False, False, False, False],  # an empty response is just its EOS
    ]
    assert finished.tolist() == [True, True, False, True]
    mask, finished = response_mask_from_ids(torch.tensor([[5, 8, 7, pad]]), [eos, 8])  # several EOS ids
    assert mask.tolist() == [[True, True, False, False]] and finished.tolist() == [True]


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(sft_dir):
    eng = _engine(sft_dir)
    prompts = MIXED[:4]

    def sample(seed):
        return eng.generate(prompts, SamplingConfig(max_new_tokens=12, temperature=1.0, seed=seed))

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = sample(1), sample(1), sample(2)
    assert torch.equal(torch.get_rng_state(), state)  # documented: a seeded call restores the caller's RNG
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_mask, c.response_mask) or not torch.equal(a.response_ids, c.response_ids)
    sample(None)  # unseeded: draws from (and advances) the global RNG
    assert not torch.equal(torch.get_rng_state(), state)
    assert step_seed(0, 1) != step_seed(1, 0) and step_seed(5, 3) == step_seed(5, 3)


def test_unfinished_rows_and_over_long_prompts(tiny_model_dir):
    eng = _engine(tiny_model_dir)  # untrained: it almost never says EOS
    r = eng.generate(["What is two plus two?", "word " * 1200], SamplingConfig(max_new_tokens=8, do_sample=False))
    assert not r.finished.any() and r.response_mask.all() and r.response_ids.shape == (2, 8)
    assert r.n_truncated == 1 and r.prompt_ids.shape[1] == 1024 - 8  # cut from the left to window - max_new_tokens
    assert r.prompt_mask[1].all()
    with pytest.raises(ConfigError, match="max_new_tokens"):
        eng.generate(["hi"], SamplingConfig(max_new_tokens=1020))
    with pytest.raises(ConfigError, match="temperature"):
        eng.generate(["hi"], SamplingConfig(temperature=0.0))


def test_make_engine():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(Seq2SeqRMError, match="vllm is not installed; pip install vllm on a GPU machine"):
            make_engine("vllm", object(), object(), CHAT)
    with pytest.raises(ConfigError, match="hf, vllm"):
        make_engine("tgi", object(), object(), CHAT)


# ------------------------------------------------------------------------------------ generate_to_file


def test_generate_to_file_writes_one_row_per_prompt_atomically(echo_dir, tmp_path, caplog):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "What is one plus one?"}, {"prompt": [{"role": "user", "content": "Hello there"}]},
         {"prompt": "Why is the sky blue?", "chosen": "a", "rejected": "b"}, {"prompt": "word " * 1200}],
    )
    out = tmp_path / "gen" / "responses.jsonl"
    with caplog.at_level("WARNING", logger="seq2seq_rm"):
        n = generate_to_file(echo_dir, prompts, out, SamplingConfig(max_new_tokens=24, do_sample=False), batch_size=3)
    assert n == 4 and "1 prompts were longer" in caplog.text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["finished", "n_tokens", "prompt", "response"]] * 4
    assert rows[1]["prompt"] == [{"role": "user", "content": "Hello there"}]
    for r in rows[:3]:
        assert r["response"] == SENTENCE and r["finished"] is True and r["n_tokens"] >= 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["responses.jsonl"]  # no temporary file left


def test_generate_to_file_with_a_seed_is_reproducible(sft_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in MIXED])
    s = SamplingConfig(max_new_tokens=10, seed=7)
    generate_to_file(sft_dir, prompts, tmp_path / "a.jsonl", s, batch_size=4)
    generate_to_file(sft_dir, prompts, tmp_path / "b.jsonl", s, batch_size=4)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_generate_to_file_refuses_empty_prompt_files(echo_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no rows found"):
        generate_to_file(echo_dir, empty, tmp_path / "o.jsonl", GREEDY)
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "  "}, {"prompt": ""}])
    with pytest.raises(DataError, match="all skipped .*2 empty prompt"):
        generate_to_file(echo_dir, blank, tmp_path / "o.jsonl", GREEDY)
    with pytest.raises(ConfigError, match="unknown generation engine"):
        generate_to_file(echo_dir, blank, tmp_path / "o.jsonl", GREEDY, engine="tgi")
    assert not (tmp_path / "o.jsonl").exists()


def test_lora_sft_saves_a_merged_plain_model(tiny_model_dir, sample_file, tmp_path):
    cfg = SFTRunConfig(model=tiny_model_dir, data=sample_file, out=str(tmp_path / "lora"), limit=16, train=_opts(batch_size=4))
    cfg.train.lora.enabled = True
    out = train_sft(cfg)
    assert not (out / "adapter_config.json").exists()
    base, merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(out)
    w0, w1 = base.model.layers[0].self_attn.q_proj.weight, merged.model.layers[0].self_attn.q_proj.weight
    assert w0.shape == w1.shape and not torch.equal(w0, w1)
    assert json.loads((out / "sft.json").read_text())["data"]["kept"] == 16
