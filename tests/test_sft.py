"""SFT: examples (layout, length policy, loss mask), runs (output folder, template, learning), LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import CHAT, train_options, write_jsonl
from transformers import AutoModelForCausalLM

from seq2seq_rm.config import TemplateConfig, to_dict
from seq2seq_rm.data.records import PreferenceRecord, PromptRecord
from seq2seq_rm.data.templates import render_prompt
from seq2seq_rm.errors import ConfigError, DataError, Seq2SeqRMError
from seq2seq_rm.models.loading import load_tokenizer
from seq2seq_rm.outputs import read_policy_template
from seq2seq_rm.sft import (
    SFTRunConfig,
    build_sft_examples,
    build_sft_trainer,
    resolve_response_field,
    train_sft,
)


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
    cfg = SFTRunConfig(model=tiny_model_dir, data="unused", out=str(tmp_path / "x"), train=train_options())
    trainer, _ = build_sft_trainer(cfg, [PromptRecord("What is two plus two?", "Two plus two is four.")], tok, tmp_path)
    # What the model is trained on: the collated batch (TRL builds the labels in the dataset or in
    # the collator, depending on its version).
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    target = [i for i, lab in zip(ids, labels, strict=True) if lab != -100]
    assert tok.decode(target) == "Two plus two is four.<|im_end|>"  # no second EOS added by the trainer
    assert labels[: len(ids) - len(target)] == [-100] * (len(ids) - len(target))


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


def test_sft_run_writes_a_policy_that_prefers_the_chosen_responses(sft_policy_dir, tiny_model_dir, sample_rows):
    meta = json.loads((Path(sft_policy_dir) / "sft.json").read_text())
    assert meta["response_field"] == "chosen" and meta["data"]["kept"] == 120 and meta["style"] == "chat"
    assert meta["template"] == to_dict(CHAT) and read_policy_template(sft_policy_dir) == CHAT
    curve = [loss for _, loss in meta["loss_curve"]]
    assert len(curve) >= 4 and curve[-1] < 0.85 * curve[0]
    assert not list(Path(sft_policy_dir).parent.glob(".*tmp*"))  # the temporary folder was renamed, not left
    trained = AutoModelForCausalLM.from_pretrained(sft_policy_dir)  # a plain save_pretrained folder
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = load_tokenizer(sft_policy_dir)
    recs = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"]) for r in sample_rows[:30]]
    examples, _ = build_sft_examples(recs, tok, CHAT, 256)
    before, after = _mean_logprob(base, examples), _mean_logprob(trained, examples)
    assert after > before + 1.0, (before, after)


def test_failed_sft_run_leaves_no_output_folder(tiny_model_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "response": "a"}, {"prompt": "x", "response": 3}])
    with pytest.raises(DataError, match="row 2"):  # strict: a bad row stops the run (else it is skipped)
        train_sft(SFTRunConfig(model=tiny_model_dir, data=bad, out=str(tmp_path / "out"), train=train_options(),
                               strict_data=True))
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 300, "response": "yes"}])
    cfg = SFTRunConfig(model=tiny_model_dir, data=long, out=str(tmp_path / "out"), train=train_options(max_length=32))
    cfg.train.truncation = "skip"
    with pytest.raises(Seq2SeqRMError, match="no SFT examples"):  # fails inside the atomic folder
        train_sft(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "long.jsonl"]


def test_lora_sft_saves_a_merged_plain_model(tiny_model_dir, sample_file, tmp_path):
    cfg = SFTRunConfig(model=tiny_model_dir, data=sample_file, out=str(tmp_path / "lora"), limit=16, train=train_options(batch_size=4))
    cfg.train.lora.enabled = True
    out = train_sft(cfg)
    assert not (out / "adapter_config.json").exists()
    base, merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(out)
    w0, w1 = base.model.layers[0].self_attn.q_proj.weight, merged.model.layers[0].self_attn.q_proj.weight
    assert w0.shape == w1.shape and not torch.equal(w0, w1)
    assert json.loads((out / "sft.json").read_text())["data"]["kept"] == 16
