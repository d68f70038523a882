"""Outputs never destroy data: every command refuses an --out it did not write, replaces an
earlier output of its own kind only with --overwrite, cleans what killed runs left behind, and
stops with one readable paragraph on a full or read-only disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from helpers import write_jsonl

from seq2seq_rm.cli import main
from seq2seq_rm.errors import ConfigError
from seq2seq_rm.io import _HOST, atomic_dir, clean_stale
from seq2seq_rm.outputs import check_output_dir, check_output_file, output_kind


def _corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", [{"text": "hello world, a tiny corpus"}] * 10)


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_rm_train_refuses_a_folder_holding_other_files_before_any_work(tiny_model_dir, sample_file, tmp_path, caplog):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code = main(["rm", "train", "--kind", "scalar", "--model", tiny_model_dir, "--data", sample_file, "--out", str(out)])
    assert code == 2 and "notes.txt" in caplog.text and "not a reward-model output" in caplog.text
    assert _tree(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert "--overwrite" not in caplog.text.split("notes.txt")[1]  # overwrite does not help: it is not ours
    assert main(["rm", "train", "--kind", "scalar", "--model", tiny_model_dir, "--data", sample_file,
                 "--out", str(out), "--overwrite"]) == 2
    assert _tree(out) == ["notes.txt"]


def test_tiny_model_refuses_an_out_that_holds_its_corpus(tmp_path, caplog):
    corpus = _corpus(tmp_path)
    assert main(["tiny-model", "--corpus", corpus, "--out", str(tmp_path)]) == 2
    assert "holds the input" in caplog.text or "not empty" in caplog.text
    assert os.path.isfile(corpus)


def test_an_out_that_is_a_file_is_refused_and_left_as_it_was(tmp_path, caplog):
    f = tmp_path / "model"
    f.write_text("not a folder")
    assert main(["tiny-model", "--corpus", _corpus(tmp_path), "--out", str(f)]) == 2
    assert "is a file" in caplog.text and f.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "model"]  # no hidden .model.old-*


def test_the_current_folder_is_refused(tmp_path, monkeypatch, caplog):
    corpus = _corpus(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["tiny-model", "--corpus", corpus, "--out", "."]) == 2
    assert "current folder" in caplog.text and _tree(work) == []


def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path, caplog):
    corpus, out = _corpus(tmp_path), tmp_path / "m"
    assert main(["tiny-model", "--corpus", corpus, "--out", str(out), "--seed", "1"]) == 0
    assert output_kind(out) == "tiny-model"
    first = (out / "model.safetensors").read_bytes()
    assert main(["tiny-model", "--corpus", corpus, "--out", str(out), "--seed", "2"]) == 2
    assert "pass --overwrite" in caplog.text and (out / "model.safetensors").read_bytes() == first
    assert main(["tiny-model", "--corpus", corpus, "--out", str(out), "--seed", "2", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != first
    assert json.loads((out / "tiny_model.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "m"]  # nothing hidden left over


def test_an_output_of_another_kind_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "sft.json").write_text('{"kind": "sft"}')
    (out / "model.safetensors").write_text("weights")
    with pytest.raises(ConfigError, match="holds a sft output, not a tiny-model output"):
        check_output_dir(out, "tiny-model", overwrite=True)
    check_output_dir(out, "sft", overwrite=True)  # its own kind is fine
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output_dir(out, "sft")


def test_file_outputs_are_replaced_only_with_overwrite(seq2seq_rm_dir, tmp_path, caplog):
    data = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Hi", "response": "Hello there."}])
    out = tmp_path / "scores.json"
    out.write_text("precious")
    assert main(["rm", "score", "--rm", seq2seq_rm_dir, "--data", data, "--out", str(out), "--show", "0"]) == 2
    assert out.read_text() == "precious" and "pass --overwrite" in caplog.text
    assert main(["rm", "score", "--rm", seq2seq_rm_dir, "--data", data, "--out", str(out), "--show", "0",
                 "--overwrite"]) == 0
    assert json.loads(out.read_text())["rows"][0]["response"] == "Hello there."
    with pytest.raises(ConfigError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)


def _stale_name(name: str, what: str, pid: int) -> str:
    return f".{name}.{what}-{_HOST}-{pid}" + ("-abcd1234" if what == "tmp" else "")


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)  # that process has exited


def test_temporaries_of_killed_runs_are_cleaned_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    killed = tmp_path / _stale_name("rm", "tmp", dead)
    live = tmp_path / _stale_name("rm", "tmp", os.getpid())
    other_host = tmp_path / f".rm.tmp-00000000-{dead}-abcd1234"
    for d in (killed, live, other_host):
        d.mkdir()
        (d / "model.safetensors").write_text("half written")
    check_output_dir(tmp_path / "rm", "reward-model")  # every command cleans its output's parent first
    assert not killed.exists() and live.exists() and other_host.exists()


def test_a_replace_killed_between_its_renames_gives_the_previous_output_back(tmp_path):
    dead = _dead_pid()
    old = tmp_path / _stale_name("policy", "old", dead)  # the previous output, moved aside, never put back
    old.mkdir()
    (old / "sft.json").write_text('{"kind": "sft"}')
    assert clean_stale(tmp_path) == [old]
    assert (tmp_path / "policy" / "sft.json").is_file() and not old.exists()
    # when the new output did land, the leftover old copy is what gets removed
    old.mkdir()
    clean_stale(tmp_path)
    assert not old.exists() and (tmp_path / "policy" / "sft.json").is_file()


def test_ppo_checkpoint_temporaries_of_a_killed_run_are_cleaned(tiny_model_dir, tmp_path):
    from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hello."}])
    ckpts = tmp_path / "ppo.run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (tmp_path / "ppo.run" / "config.json").write_text("{}")
    stale = ckpts / _stale_name("step-000004", "tmp", _dead_pid())
    stale.mkdir()

    class NoRM:
        kind, tokenizer = "scalar", None

    from seq2seq_rm.models.loading import load_tokenizer

    NoRM.tokenizer = load_tokenizer(tiny_model_dir)
    PPOTrainer(PPOConfig(policy=tiny_model_dir, prompts=prompts, out=str(tmp_path / "ppo"), resume=True),
               reward_model=NoRM())
    assert not stale.exists()


def test_atomic_folders_and_files_follow_the_umask(tmp_path):
    from seq2seq_rm.io import atomic_write_text

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
        atomic_write_text(tmp_path / "out" / "g.txt", "y")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0700
    assert (tmp_path / "out" / "g.txt").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only")])
def test_a_full_or_read_only_disk_is_one_readable_error(tmp_path, monkeypatch, capsys, err, words):
    import seq2seq_rm.io as io

    target = tmp_path / "export" / "preferences.jsonl"

    def failing_write(path, text):
        raise OSError(err, os.strerror(err), str(target))

    monkeypatch.setattr(io, "atomic_write_text", failing_write)
    code = main(["tasks", "export", "instruct", "--split", "test", "--n", "3", "--out", str(tmp_path / "export")])
    stderr = capsys.readouterr().err
    assert code == 1 and words in stderr and str(target) in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
