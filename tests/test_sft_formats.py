"""SFT on TRL's standard formats: text (loss on every token), prompt/completion, messages (loss on the
final assistant turn), with the layout rule P(x) ++ R(y) + EOS; TRL-style flags."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import CHAT

from seq2seq_rm.cli import main, parse_args
from seq2seq_rm.data.loading import load_sft
from seq2seq_rm.models.loading import load_tokenizer
from seq2seq_rm.sft import build_sft_examples

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _split(example):
    ids, mask = example["input_ids"], example["completion_mask"]
    return [i for i, m in zip(ids, mask, strict=True) if not m], [i for i, m in zip(ids, mask, strict=True) if m]


def test_text_rows_train_on_every_token(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    records, _, _ = load_sft(FIXTURES / "sft_text.jsonl")
    examples, stats = build_sft_examples(records, tok, CHAT, max_length=256)
    assert stats.examples == 2
    ex = examples[0]
    assert ex["completion_mask"] == [1] * len(ex["input_ids"])  # no prompt: the loss is on every token
    assert tok.decode(ex["input_ids"]) == "The quick brown fox jumps over the lazy dog.<|im_end|>"  # no template
    # Too long: cut from the right, still all loss.
    examples, stats = build_sft_examples(records[:1], tok, CHAT, max_length=10)
    assert stats.truncated == 1 and len(examples[0]["input_ids"]) == 10 and examples[0]["completion_mask"] == [1] * 10


def test_messages_rows_train_on_the_final_assistant_turn(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    records, _, _ = load_sft(FIXTURES / "sft_messages.jsonl")
    examples, _ = build_sft_examples(records, tok, CHAT, max_length=256)
    prompt, response = _split(examples[0])
    assert tok.decode(prompt) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                  "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(response) == "It is blue.<|im_end|>"
    prompt, response = _split(examples[1])
    assert tok.decode(prompt) == ("<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\nSeven."
                                  "<|im_end|>\n<|im_start|>user\nAnother one?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(response) == "Eleven.<|im_end|>"


def test_prompt_completion_rows(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    records, _, _ = load_sft(FIXTURES / "sft_prompt_completion.jsonl")
    examples, _ = build_sft_examples(records, tok, CHAT, max_length=256)
    prompt, response = _split(examples[0])
    assert tok.decode(prompt) == "<|im_start|>user\nThe sky is<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(response) == " blue.<|im_end|>"
    prompt, response = _split(examples[1])
    assert tok.decode(prompt) == "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(response) == "It is blue.<|im_end|>"


def test_trl_flag_names_are_aliases():
    ours = parse_args(["sft", "--model", "m", "--data", "d", "--out", "o", "--lr", "0.1", "--epochs", "2",
                       "--batch-size", "4", "--split", "s", "--subset", "c"])
    trl = parse_args(["sft", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o",
                      "--learning_rate", "0.1", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
                      "--dataset_train_split", "s", "--dataset_config", "c"])
    keys = ("model", "data", "out", "lr", "epochs", "batch_size", "split", "subset")
    assert [getattr(trl, k) for k in keys] == [getattr(ours, k) for k in keys] == ["m", "d", "o", 0.1, 2.0, 4, "s", "c"]
    rm = parse_args(["rm", "train", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o",
                     "--learning_rate", "0.1", "--num_train_epochs", "2", "--per_device_train_batch_size", "4"])
    assert [getattr(rm, k) for k in keys[:6]] == ["m", "d", "o", 0.1, 2.0, 4]


def test_sft_command_on_messages_with_trl_flags(tiny_model_dir, tmp_path):
    out = tmp_path / "policy"
    code = main(["sft", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(FIXTURES / "sft_messages.jsonl"),
                 "--output_dir", str(out), "--num_train_epochs", "1", "--learning_rate", "1e-3",
                 "--per_device_train_batch_size", "2", "--max_length", "128"])
    assert code == 0
    meta = json.loads((out / "sft.json").read_text())
    assert (meta["sft_format"], meta["loss_on"], meta["response_field"]) == ("messages", "final assistant turn",
                                                                              "response")
    assert meta["data"]["format"] == "jsonl/messages" and meta["data"]["kept"] == 2
    assert meta["train"]["lr"] == 1e-3 and meta["train"]["batch_size"] == 2 and meta["max_length"] == 128
