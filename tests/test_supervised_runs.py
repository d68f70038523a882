"""Supervised stages that survive: run folder, atomic checkpoints, --resume, Ctrl-C, trainer_args, report_to.

The resume tests compare against a run never stopped: the same options trained straight through
must give exactly the weights of a run that was killed (or interrupted) and resumed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from helpers import train_options, write_jsonl
from safetensors.torch import load_file

from seq2seq_rm.config import RMTrainConfig, load_config
from seq2seq_rm.errors import ConfigError, Seq2SeqRMError
from seq2seq_rm.rewards.train import train_reward_model
from seq2seq_rm.sft import SFTRunConfig, train_sft
from seq2seq_rm.train_run import published_checkpoints, run_dir_of


def _sft(tiny_model_dir, data, out, **train):
    return SFTRunConfig(model=tiny_model_dir, data=data, out=str(out), limit=32,
                        train=train_options(**{"epochs": 2.0, "batch_size": 8, "save_steps": 2, **train}))


def _weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


def _assert_same_weights(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


def _count_training_steps(monkeypatch) -> list:
    """A list that grows by one per optimisation step (grad_accum=1) the Trainer runs from now on."""
    from transformers import Trainer

    calls, real = [], Trainer.training_step

    def counted(self, *args, **kwargs):
        calls.append(self.state.global_step)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", counted)
    return calls


def _steps(folder) -> list[int]:
    return [int(p.name.split("-")[1]) for p in published_checkpoints(run_dir_of(folder))]


# ------------------------------------------------------------------------------------ resume


def test_sft_killed_during_a_save_resumes_from_the_last_good_checkpoint_and_ends_as_if_never_stopped(
        tiny_model_dir, sample_file, tmp_path, monkeypatch):
    from transformers import Trainer

    straight = train_sft(_sft(tiny_model_dir, sample_file, tmp_path / "straight"))
    start = _weights(tiny_model_dir)
    assert any(not torch.equal(start[k], v) for k, v in _weights(straight).items())  # it did train

    # The save at step 6 dies half-way (model and optimizer written, RNG state not): that folder
    # must never be taken for a checkpoint.
    real = Trainer._save_rng_state

    def dies_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            raise RuntimeError("killed during the save")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_at_step_6)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed during the save"):
        train_sft(_sft(tiny_model_dir, sample_file, out))
    monkeypatch.setattr(Trainer, "_save_rng_state", real)
    run = run_dir_of(out)
    assert not out.exists()  # no final output from a run that did not finish
    assert _steps(out) == [2, 4]  # the published ones; the half-written save stayed unpublished
    assert (run / "checkpoint-6").is_dir() and not (run / "checkpoint-6" / "checkpoint.json").exists()

    ran = _count_training_steps(monkeypatch)
    train_sft(SFTRunConfig(**{**_sft(tiny_model_dir, sample_file, out).__dict__, "resume": True}))
    assert ran == [4, 5, 6, 7]  # only the steps after checkpoint-4 were trained again
    _assert_same_weights(straight, out)
    assert not (run / "checkpoint-6").exists()  # the killed save was removed, not resumed from
    assert _steps(out) == [6, 8]
    meta = json.loads((out / "sft.json").read_text())
    assert meta["resumed_from"].endswith("checkpoint-4")
    straight_meta = json.loads((straight / "sft.json").read_text())
    # the log history continues the checkpoint's (the first loss after a resume averages the steps
    # since the resume only: the Trainer's own behaviour)
    assert [s for s, _ in meta["loss_curve"]] == [s for s, _ in straight_meta["loss_curve"]]


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_scalar_rm(tiny_model_dir, sample_file, tmp_path,
                                                                      monkeypatch):
    from seq2seq_rm.training import TrainProgress

    def cfg(out, **kw):
        return RMTrainConfig(kind="scalar", model=tiny_model_dir, data=sample_file, out=str(out), limit=40,
                             train=train_options(epochs=1.0, batch_size=8, save_steps=0), **kw)

    straight = train_reward_model(cfg(tmp_path / "straight"))
    assert _steps(straight) == []  # save_steps=0: no periodic checkpoints

    real = TrainProgress.on_step_end

    def ctrl_c_at_step_2(self, args, state, control, **kwargs):
        real(self, args, state, control, **kwargs)
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TrainProgress, "on_step_end", ctrl_c_at_step_2)
    out = tmp_path / "resumed"
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg(out))
    assert signal.getsignal(signal.SIGINT) is previous  # the handler was put back
    monkeypatch.setattr(TrainProgress, "on_step_end", real)
    assert not out.exists() and _steps(out) == [2]  # the signal came at the end of step 2: saved there, stopped

    with pytest.raises(ConfigError, match="--resume to continue it"):  # a fresh run refuses the earlier run
        train_reward_model(cfg(out))
    ran = _count_training_steps(monkeypatch)
    train_reward_model(cfg(out, resume=True))
    assert ran == [2, 3, 4]  # 40 pairs / 8 = 5 steps, 2 of them done before Ctrl-C
    _assert_same_weights(straight, out)


def test_resume_refuses_another_model_changed_options_or_changed_data(tiny_model_dir, gpt2_model_dir, tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"answer number {i}"} for i in range(8)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    first = SFTRunConfig(model=tiny_model_dir, data=data, out=str(tmp_path / "p"),
                         train=train_options(batch_size=8, save_steps=1))
    train_sft(first)

    def again(**kw):
        d = {**first.__dict__, "resume": True, **kw}
        return SFTRunConfig(**d)

    with pytest.raises(ConfigError, match=r"model: '.*tiny' in the checkpoint, '.*gpt2' now"):
        train_sft(again(model=gpt2_model_dir))
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.003 in the checkpoint, 0\.001 now"):
        train_sft(again(train=train_options(batch_size=8, save_steps=1, lr=1e-3)))
    write_jsonl(tmp_path / "d.jsonl", rows[::-1])  # same path and options, other examples
    with pytest.raises(ConfigError, match="training examples differ"):
        train_sft(again())
    write_jsonl(tmp_path / "d.jsonl", rows)
    # bookkeeping may change: more checkpoints kept, other logging
    train_sft(again(train=train_options(batch_size=8, save_steps=1, save_total_limit=3, logging_steps=1)))
    assert (tmp_path / "p" / "sft.json").is_file()


def test_damaged_checkpoint_and_foreign_run_folders_are_reported_by_name(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q {i}", "response": f"a {i}"} for i in range(8)])
    cfg = SFTRunConfig(model=tiny_model_dir, data=data, out=str(tmp_path / "p"),
                       train=train_options(batch_size=8, save_steps=1))
    train_sft(cfg)
    ckpt = published_checkpoints(run_dir_of(cfg.out))[-1]
    (ckpt / "optimizer.pt").unlink()
    with pytest.raises(Seq2SeqRMError, match=rf"checkpoint {ckpt} is damaged .*missing optimizer\.pt"):
        train_sft(SFTRunConfig(**{**cfg.__dict__, "resume": True}))
    with pytest.raises(ConfigError, match="contradict"):
        SFTRunConfig(**{**cfg.__dict__, "resume": True, "overwrite": True})
    foreign = tmp_path / "q.run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a seq2seq-rm run folder"):
        train_sft(SFTRunConfig(**{**cfg.__dict__, "out": str(tmp_path / "q"), "overwrite": True}))
    assert (foreign / "notes.txt").read_text() == "mine"
    # --overwrite replaces our own earlier run: its damaged checkpoint is gone, the new run's are there
    train_sft(SFTRunConfig(**{**cfg.__dict__, "overwrite": True}))
    assert all((c / "optimizer.pt").is_file() for c in published_checkpoints(run_dir_of(cfg.out)))


# ------------------------------------------------------------------------------------ trainer_args


def test_trainer_args_pass_through_and_bad_keys_stop_at_config_read(tiny_model_dir, sample_file, tmp_path):
    from seq2seq_rm.models.loading import load_tokenizer
    from seq2seq_rm.sft import build_sft_trainer, load_sft_records

    base = ["model=" + tiny_model_dir, "data=" + sample_file, "out=" + str(tmp_path / "o")]
    cfg = load_config(SFTRunConfig, None, base + ["train.trainer_args.max_grad_norm=0.25",
                                                  "train.trainer_args.optim=adafactor"])
    records, *_ = load_sft_records(cfg)
    trainer, _ = build_sft_trainer(cfg, records[:8], load_tokenizer(tiny_model_dir), tmp_path / "o.run")
    assert trainer.args.max_grad_norm == 0.25 and trainer.args.optim == "adafactor"
    assert type(trainer.optimizer or trainer.create_optimizer()).__name__ == "Adafactor"
    assert trainer.args.learning_rate == cfg.train.lr  # ours still set

    def refused(override, pattern, cls=SFTRunConfig, extra=()):
        with pytest.raises(ConfigError, match=pattern):
            load_config(cls, None, base + list(extra) + [override])

    refused("train.trainer_args.max_grad_nrom=1", r"unknown option train\.trainer_args\.max_grad_nrom.*max_grad_norm")
    refused("train.trainer_args.learning_rate=1", r"set by seq2seq-rm itself; use train\.lr")
    refused("train.trainer_args.output_dir=x", r"use --out")
    refused("train.trainer_args.eval_strategy=steps", "without an evaluation set")
    refused("train.trainer_args.optim=adamw_nonsense", r"SFTConfig refuses them: ValueError")
    refused("train.trainer_args.packing=true", "tokenises the data itself")
    # a TRL SFTConfig field is not a RewardConfig field
    refused("train.trainer_args.loss_type=dft", "not a field of TRL's RewardConfig", RMTrainConfig, ["kind=scalar"])
    from seq2seq_rm.experiment import ExperimentConfig

    with pytest.raises(ConfigError, match=r"rm\.trainer_args\.loss_type: not a field of TRL's RewardConfig"):
        load_config(ExperimentConfig, None, ["rm.trainer_args.loss_type=dft"])  # the rm group trains both kinds
    with pytest.raises(ConfigError, match=r"sft\.trainer_args\.seed is set by seq2seq-rm itself; use sft\.seed"):
        load_config(ExperimentConfig, None, ["sft.trainer_args.seed=3"])
    if __import__("importlib.util").util.find_spec("deepspeed") is None:
        refused("train.trainer_args.deepspeed=ds.json", "needs the deepspeed package")


# ------------------------------------------------------------------------------------ report_to


def test_report_to_checks_what_is_installed_and_reaches_the_trainer(tiny_model_dir, sample_file, tmp_path,
                                                                    monkeypatch):
    import importlib.util

    for name in ("wandb", "trackio"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(ConfigError, match=rf"report_to={name} needs the {name} package"):
                train_options(report_to=name)
    with pytest.raises(ConfigError, match="none alone"):
        train_options(report_to=["tensorboard", "none"])
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        train_options(report_to="wandbb")

    # A stand-in trackio records what the Trainer's TrackioCallback sends it.
    fake = tmp_path / "fake" / "trackio"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import types\n__version__ = '0.0.1'\nLOGGED = []\nINIT = {}\n"
        "class _Config(dict):\n    def update(self, d, allow_val_change=False):\n        dict.update(self, d)\n"
        "config = _Config()\n"
        "_none = types.SimpleNamespace(get=lambda: None)\n"
        "context_vars = types.SimpleNamespace(current_space_id=_none, current_run=_none, current_project=_none)\n"
        "def init(**kw):\n    INIT.update(kw)\n"
        "def log(metrics, **kw):\n    LOGGED.append(dict(metrics))\n"
        "def finish():\n    INIT['finished'] = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.delitem(sys.modules, "trackio", raising=False)
    out = tmp_path / "p"
    train_sft(SFTRunConfig(model=tiny_model_dir, data=sample_file, out=str(out), limit=16,
                           train=train_options(batch_size=4, logging_steps=1, save_steps=0, report_to="trackio")))
    import trackio

    losses = [row["train/loss"] for row in trackio.LOGGED if "train/loss" in row]
    meta = json.loads((out / "sft.json").read_text())
    assert losses == pytest.approx([loss for _, loss in meta["loss_curve"]]) and len(losses) == 4
    assert trackio.INIT.get("finished")
    assert not (run_dir_of(out) / "runs").exists()  # TensorBoard was not chosen: no event files


def test_tensorboard_logs_go_to_the_run_folder(sft_policy_dir):
    assert list((run_dir_of(sft_policy_dir) / "runs").rglob("events.out.tfevents.*"))
    assert not (Path(sft_policy_dir) / "runs").exists()  # the policy folder holds the model only


def test_two_process_sft_publishes_checkpoints_holding_every_rank_state(tiny_model_dir, sample_file, tmp_path):
    """torchrun, gloo on CPU: every rank's RNG state is in a checkpoint before it is published."""
    import subprocess

    out = tmp_path / "p"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           "-m", "seq2seq_rm.cli", "sft", "--model", tiny_model_dir, "--data", sample_file, "--out", str(out),
           "limit=32", "train.batch_size=4", "train.save_steps=2", "train.save_total_limit=9",
           "train.trainer_args.use_cpu=true"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _steps(out) == [2, 4]  # 32 rows / (2 processes x 4) per step
    for ckpt in published_checkpoints(run_dir_of(out)):
        assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    assert not list(run_dir_of(out).glob("checkpoint-*")) and (out / "sft.json").is_file()
