"""What a person sees in the terminal while training: no raw ``{'loss': ...}`` dicts, no transformers
LOAD REPORT table for the expected new score head, no per-load weight bars, one progress display."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import train_options

from seq2seq_rm.data.records import PromptRecord

PKU = Path(__file__).parent / "fixtures" / "data" / "pku_saferlhf.jsonl"
NOISE = ("{'loss'", "'learning_rate'", "LOAD REPORT", "MISSING", "Loading weights", "Writing model shards",
         "Building labels", "it/s]")


def _clean_env() -> dict:
    """The environment of a fresh shell (an earlier in-process command may have set these)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    return {**env, "HF_HUB_OFFLINE": "1"}


def test_scalar_rm_training_prints_readable_lines_and_records_the_chosen_label(tiny_model_dir, tmp_path):
    out = tmp_path / "rm"
    # A real process, as a user runs it (transformers' own log handler writes to the real stderr).
    # -v: transformers logs at WARNING, where it would print its LOAD REPORT table for the new score head.
    proc = subprocess.run(
        [sys.executable, "-m", "seq2seq_rm.cli", "-v", "rm", "train", "--kind", "scalar",
         "--model_name_or_path", tiny_model_dir, "--dataset_name", str(PKU), "--output_dir", str(out),
         "--num_train_epochs", "2", "--per_device_train_batch_size", "2", "--max-length", "96",
         "train.logging_steps=1", "pku_preference=safer", "pku_drop_both_unsafe=true"],
        capture_output=True, text=True, timeout=300, env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    for noise in NOISE:
        assert noise not in proc.stdout and noise not in proc.stderr, noise
    assert proc.stdout == ""  # training reports on stderr only
    err = proc.stderr
    assert "no classification head: newly initialised score.weight" in err  # the one line about the new head
    assert "\r" not in err and "%|" not in err  # not a terminal: no bar, plain log lines
    # 3 pairs (the both-unsafe one dropped), batch 2, 2 epochs: 4 steps, one log line each.
    for step in (1, 2, 3, 4):
        assert f"training step {step}/4" in err
    assert "loss " in err and "lr " in err
    meta = json.loads((out / "seq2seq_rm.json").read_text())
    data = meta["data"]
    assert data["chosen_by"] == "safer_response_id"
    assert data["kept"] == 3 and data["skipped"] == {"both responses unsafe (pku_drop_both_unsafe)": 1}
    assert data["skipped_rows"] == {"both responses unsafe (pku_drop_both_unsafe)": [4]}
    assert data["details"]["pku_saferlhf"]["both_unsafe"] == 0


def test_on_a_terminal_one_bar_shows_loss_and_lr(tiny_model_dir, tmp_path):
    from seq2seq_rm.models.loading import load_tokenizer
    from seq2seq_rm.sft import SFTRunConfig, build_sft_trainer
    from seq2seq_rm.training import use_progress

    tok = load_tokenizer(tiny_model_dir)
    cfg = SFTRunConfig(model=tiny_model_dir, data="unused", out=str(tmp_path / "x"),
                       train=train_options(batch_size=2, logging_steps=1))
    records = [PromptRecord("What is two plus two?", "Two plus two is four.")] * 4
    trainer, _ = build_sft_trainer(cfg, records, tok, tmp_path)
    progress = use_progress(trainer, "sft")
    names = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    assert "PrinterCallback" not in names and "ProgressCallback" not in names and names.count("TrainProgress") == 1
    screen = io.StringIO()
    progress._stream, progress._tty = screen, True
    trainer.train()
    text = screen.getvalue()
    assert "sft: 100%" in text and "2/2" in text  # one bar, 2 steps
    assert "loss=" in text and "lr=" in text  # the logs go into the bar's postfix
    assert "{'loss'" not in text and "{" not in text
    assert progress.bar is None  # closed at the end


def test_without_a_terminal_a_long_run_prints_a_bounded_number_of_lines(caplog):
    from types import SimpleNamespace

    from seq2seq_rm.training import TrainProgress

    progress = TrainProgress("sft", stream=io.StringIO(), tty=False)
    args = SimpleNamespace(logging_steps=10)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=5400, global_step=0)
    with caplog.at_level("INFO", logger="seq2seq_rm.training"):
        progress.on_train_begin(args, state, None)
        for step in range(10, 5401, 10):  # the Trainer logs every logging_steps
            state.global_step = step
            progress.on_log(args, state, None, logs={"loss": 1.0, "learning_rate": 1e-3})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sft step")]
    # 5400 / (10 * 40) -> every 14th log event = every 140 steps, plus the last step
    assert "a log line every 140" in caplog.records[0].getMessage()
    assert len(lines) == 5400 // 140 + 1 and lines[0].startswith("sft step 140/5400")
    assert lines[-1].startswith("sft step 5400/5400")


def test_ppo_progress_without_a_terminal_is_log_lines_not_bar_fragments(caplog):
    from seq2seq_rm.rl.ppo import _Progress

    screen = io.StringIO()  # not a terminal
    with caplog.at_level("INFO", logger="seq2seq_rm.rl.ppo"):
        bar = _Progress(total=40, initial=0, enabled=True, stream=screen)
        for _ in range(40):
            bar.update(reward="+1.00", kl="0.010")
        bar.close()
    assert screen.getvalue() == ""  # no bar drawn into a file
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "PPO step 2/40: reward +1.00, kl 0.010" and len(lines) == 20 and lines[-1].startswith("PPO step 40/40")
