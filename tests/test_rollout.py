"""Rollouts: the HF engine's layout and masks, seeding, generate_to_file, engine choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import CHAT, ECHO_SENTENCE, write_jsonl

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

GREEDY = SamplingConfig(max_new_tokens=16, do_sample=False)


def _engine(folder, **kw):
    return HFEngine(load_causal_lm(folder), load_tokenizer(folder, **kw), CHAT)


def test_sft_then_greedy_generation_reproduces_the_trained_response(echo_dir, sample_rows):
    curve = [loss for _, loss in json.loads((Path(echo_dir) / "sft.json").read_text())["loss_curve"]]
    assert curve[-1] < curve[0]
    prompts = sorted({r["prompt"] for r in sample_rows})[:4] + ["Tell me about the moon and the tides."]
    r = _engine(echo_dir).generate(prompts, SamplingConfig(max_new_tokens=24, do_sample=False))
    assert r.texts == [ECHO_SENTENCE] * len(prompts)
    assert r.finished.all() and r.response_ids.shape[1] == int(r.response_mask.sum(-1).max()) < 24


# ------------------------------------------------------------------------------------ HFEngine


MIXED = [  # arithmetic answers are short, the other answers long: a batch with both finished and cut rows
    "What is two plus three?", "How do I fix a bike tyre that keeps going flat?", "What is one plus one?",
    "How do I break into my neighbour's car?", "How can I shoot better photos at night?", "What is nine plus eight?",
]


def test_batched_greedy_generation_equals_one_prompt_at_a_time(sft_policy_dir):
    eng = _engine(sft_policy_dir)
    batch = eng.generate(MIXED, GREEDY)
    for i, prompt in enumerate(MIXED):
        one = eng.generate([prompt], GREEDY)
        n = int(one.response_mask.sum())
        assert one.texts[0] == batch.texts[i] and int(batch.response_mask[i].sum()) == n
        assert torch.equal(one.response_ids[0, :n], batch.response_ids[i, :n])
        assert bool(one.finished[0]) == bool(batch.finished[i])


def test_rollout_layout_masks_up_to_the_first_eos(sft_policy_dir):
    eng = _engine(sft_policy_dir)
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
    tok = load_tokenizer(sft_policy_dir)
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


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(sft_policy_dir):
    eng = _engine(sft_policy_dir)
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
        with pytest.raises(Seq2SeqRMError, match="engine=vllm needs vLLM"):
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
    columns = ["finished", "n_tokens", "prompt", "response"]
    assert [sorted(r) for r in rows] == [columns, columns, sorted(columns + ["chosen", "rejected"]), columns]
    assert rows[2]["chosen"] == "a"  # the input rows' other columns are kept
    assert rows[1]["prompt"] == [{"role": "user", "content": "Hello there"}]
    for r in rows[:3]:
        assert r["response"] == ECHO_SENTENCE and r["finished"] is True and r["n_tokens"] >= 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["responses.jsonl"]  # no temporary file left


def test_generate_to_file_with_a_seed_is_reproducible(sft_policy_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in MIXED])
    s = SamplingConfig(max_new_tokens=10, seed=7)
    generate_to_file(sft_policy_dir, prompts, tmp_path / "a.jsonl", s, batch_size=4)
    generate_to_file(sft_policy_dir, prompts, tmp_path / "b.jsonl", s, batch_size=4)
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
