"""The command line, end to end on the tiny model (what a user types)."""

from __future__ import annotations

import json

import pytest
from helpers import write_jsonl

from seq2seq_rm.cli import main
from seq2seq_rm.config import RMTrainConfig, load_config
from seq2seq_rm.errors import ConfigError


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("train.batch_size=abc", "expected an integer"),
        ("train.lora.enabled=maybe", "expected true/false"),
        ("train", "key=value"),
    ],
)
def test_bad_overrides_are_rejected_with_a_useful_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RMTrainConfig, None, [override])


def test_tiny_model_command(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "hello world", "msgs": [{"role": "user", "content": "héllo"}]}] * 20)
    assert main(["tiny-model", "--corpus", corpus, "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_train_eval_score_round_trip(tiny_model_dir, sample_file, sample_rows, tmp_path, capsys):
    out = tmp_path / "rm"
    code = main([
        "rm", "train", "--kind", "seq2seq", "--model", tiny_model_dir, "--data", sample_file, "--out", str(out),
        "--epochs", "1", "--lr", "3e-3", "--batch-size", "16", "--max-length", "128", "--seed", "1",
        "limit=32", "extraction.magnitude=prob", "extraction.rematch=positive",
    ])
    assert code == 0
    meta = json.loads((out / "seq2seq_rm.json").read_text())
    assert meta["extraction"]["magnitude"] == "prob" and meta["train"]["seed"] == 1 and meta["data"]["kept"] == 32

    test = write_jsonl(tmp_path / "test.jsonl", sample_rows[:10])
    assert main(["rm", "eval", "--rm", str(out), "--data", test, "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["pairs"] == 10 and 0 <= m["accuracy"] <= 1 and "agree_fraction_chosen" in m

    responses = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "What is one plus two?", "response": "One plus two is three."}])
    assert main(["rm", "score", "--rm", str(out), "--data", responses, "--out", str(tmp_path / "s.json")]) == 0
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    row = rows[0]
    assert "".join(row["tokens"]) == "One plus two is three.<|im_end|>"
    assert len(row["rewards"]) == len(row["tokens"]) == len(row["rm_tokens"]) == len(row["agree"])
    assert all((r > 0) == a for r, a in zip(row["rewards"], row["agree"], strict=True))  # prob magnitude keeps signs
    assert "response 1" in capsys.readouterr().out  # the coloured view was printed


def test_scalar_score_output_has_one_nonzero_reward(scalar_rm_dir, tmp_path):
    responses = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Hi", "response": "Hello there."}])
    assert main(["rm", "score", "--rm", scalar_rm_dir, "--data", responses, "--out", str(tmp_path / "s.json"), "--show", "0"]) == 0
    row = json.loads((tmp_path / "s.json").read_text())["rows"][0]
    assert [r != 0 for r in row["rewards"]] == [False] * (len(row["rewards"]) - 1) + [True]
    assert "rm_tokens" not in row


def test_errors_exit_2_and_name_the_problem(tiny_model_dir, tmp_path, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff", "chosen": "b", "rejected": "c"}\n')
    # strict_data: a bad row stops the command, naming file and row (without it the row is skipped)
    code = main(["rm", "train", "--kind", "seq2seq", "--model", tiny_model_dir, "--data", str(bad), "--out", str(tmp_path / "o"),
                 "strict_data=true"])
    assert code == 2
    assert "bad.jsonl" in caplog.text and "row 2" in caplog.text
    assert not (tmp_path / "o").exists()
    assert main(["rm", "train", "--kind", "seq2seq", "--model", tiny_model_dir, "--data", str(bad)]) == 2
    assert "--out is required" in caplog.text
    assert main(["rm", "eval", "--rm", tiny_model_dir, "--data", str(bad)]) == 2
    assert "not a reward model folder" in caplog.text


def _parsers():
    """Every (sub-)command's parser, by its command line."""
    import argparse

    from seq2seq_rm.cli import build_parser

    def walk(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, sp in action.choices.items():
                    yield from walk(sp, f"{name} {sub}")

    return dict(walk(build_parser(), "seq2seq-rm"))


# Inputs a user must name: they have no default to show.
INPUTS = {"--corpus", "--out", "--model", "--data", "--rm", "--prompts", "--policy", "--a", "--b", "--judge"}


def test_every_flag_of_every_command_has_help_and_its_default(capsys, monkeypatch):
    import argparse

    from seq2seq_rm.cli import _Formatter

    parsers = _parsers()
    assert {"seq2seq-rm rm", "seq2seq-rm rm train", "seq2seq-rm tasks", "seq2seq-rm tasks export",
            "seq2seq-rm data", "seq2seq-rm data inspect", "seq2seq-rm sft", "seq2seq-rm ppo"} <= set(parsers)
    formatter = _Formatter("seq2seq-rm")
    missing = []
    for name, parser in parsers.items():
        assert parser.description, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or isinstance(action, argparse._SubParsersAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {action.dest}: no help")
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction))
            if action.option_strings and not flag and action.option_strings[0] not in INPUTS \
                    and "default" not in formatter._get_help_string(action):
                missing.append(f"{name} {action.option_strings[0]}: no default shown")
    assert missing == []
    # The rendered help: TRL aliases and the config shortcuts with their defaults (TrainOptions: epochs 1, lr 3e-4).
    monkeypatch.setenv("COLUMNS", "400")  # no line wrapping inside what is checked
    with pytest.raises(SystemExit):
        main(["rm", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--model MODEL, --model_name_or_path MODEL", "--out OUT, --output_dir OUT",
                  "--lr LR, --learning_rate LR", "train.epochs: passes over the data (default 1)",
                  "train.lr: peak learning rate (default 0.0003)", "see `seq2seq-rm options rm-train`"):
        assert shown in text
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    assert "`seq2seq-rm options sft`" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert "sequence-to-sequence reward models" in top and "data inspect" in top


def test_options_lists_the_data_inspect_options(capsys):
    assert main(["options", "data-inspect"]) == 0
    out = capsys.readouterr().out
    assert "pku_drop_both_unsafe" in out and "columns" in out and "[better | safer]" in out
