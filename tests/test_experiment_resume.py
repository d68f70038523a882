"""A stopped experiment continues with --resume: finished stages are kept, the rest run."""

from __future__ import annotations

import json

import pytest

import seq2seq_rm.rewards.train as rm_train
import seq2seq_rm.sft as sft
from seq2seq_rm.cli import main
from seq2seq_rm.rl.ppo import PPOTrainer

ARGS = ["--seeds", "1", "size=tiny", "tasks=[instruct]", "train_pairs=8", "sft_rows=8", "ppo_prompts=8", "test_prompts=2",
        "ood_prompts=2", "sft.epochs=1", "rm.epochs=1", "ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2",
        "ppo.sampling.max_new_tokens=6", "eval_max_new_tokens=6", "n_boot=200", "ablation=[]"]


def test_a_stopped_experiment_resumes_keeping_what_it_finished(tmp_path, monkeypatch, capsys):
    out = tmp_path / "exp"
    calls = {"sft": 0, "rm": 0, "ppo": []}
    real_sft, real_rm, real_ppo = sft.train_sft, rm_train.train_reward_model, PPOTrainer.train

    def count_sft(*a, **k):
        calls["sft"] += 1
        return real_sft(*a, **k)

    def count_rm(*a, **k):
        calls["rm"] += 1
        return real_rm(*a, **k)

    def ppo(self):
        calls["ppo"].append(self.cfg.rm.rsplit("/", 1)[-1])
        if self.cfg.rm.endswith("rm-seq2seq") and len(calls["ppo"]) == 2:
            raise RuntimeError("killed in the seq2seq arm")
        return real_ppo(self)

    monkeypatch.setattr(sft, "train_sft", count_sft)
    monkeypatch.setattr(rm_train, "train_reward_model", count_rm)
    monkeypatch.setattr(PPOTrainer, "train", ppo)
    with pytest.raises(RuntimeError, match="killed"):
        main(["experiment", "--out", str(out), *ARGS])
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["status"] == "failed" and "killed" in meta["error"]
    assert calls == {"sft": 1, "rm": 2, "ppo": ["rm-scalar", "rm-seq2seq"]}
    kept = {p: (out / p).stat().st_mtime_ns for p in ("shared/sft", "seed-0/rm-scalar", "seed-0/rm-seq2seq",
                                                        "seed-0/ppo-scalar")}
    assert not (out / "seed-0/ppo-seq2seq").exists()

    # a changed option, or --overwrite with --resume, is refused before anything runs
    assert main(["experiment", "--out", str(out), "--resume", *ARGS, "rm.lr=0.5"]) == 2
    assert "rm.lr" in capsys.readouterr().err
    assert main(["experiment", "--out", str(out), "--resume", "--overwrite", *ARGS]) == 2
    assert calls["sft"] == 1

    assert main(["experiment", "--out", str(out), "--resume", *ARGS]) == 0
    assert calls == {"sft": 1, "rm": 2, "ppo": ["rm-scalar", "rm-seq2seq", "rm-seq2seq"]}  # only the missing arm
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["status"] == "done" and len(meta["resumed"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["splits"]["test"]["win_rates"]["seq2seq vs scalar"]["n"] + \
        report["splits"]["test"]["win_rates"]["seq2seq vs scalar"]["invalid"] == 2

    # another experiment can start from this one's SFT policy: no SFT stage, every arm starts from it
    out2 = tmp_path / "exp2"
    assert main(["experiment", "--out", str(out2), *ARGS, f"sft_policy={out / 'shared/sft'}"]) == 0
    assert calls["sft"] == 1 and not (out2 / "shared").exists()
    policy = json.loads((out2 / "seed-0/ppo-seq2seq.run/config.json").read_text())["policy"]
    assert policy == str(out / "shared/sft")
    assert json.loads((out2 / "report.json").read_text())["config"]["sft_policy"] == str(out / "shared/sft")
    assert "sft_policy" in (out2 / "report.html").read_text()
    # an experiment that would replace the folder holding its own SFT policy is refused before work
    assert main(["experiment", "--out", str(out), "--overwrite", *ARGS, f"sft_policy={out / 'shared/sft'}"]) == 2
    assert "holds the input" in capsys.readouterr().err and (out / "shared/sft").is_dir()


def test_sft_policy_must_be_an_sft_output_and_replaces_the_sft_stage(tmp_path, capsys):
    rm_dir = tmp_path / "rm"
    rm_dir.mkdir()
    (rm_dir / "seq2seq_rm.json").write_text(json.dumps({"kind": "scalar"}))
    out = tmp_path / "exp"
    assert main(["experiment", "--out", str(out), *ARGS, f"sft_policy={rm_dir}"]) == 2
    err = capsys.readouterr().err
    assert "is not an SFT policy folder" in err and "reward-model" in err
    assert main(["experiment", "--out", str(out), *ARGS, f"sft_policy={tmp_path / 'missing'}"]) == 2
    assert "is not an SFT policy folder" in capsys.readouterr().err
    assert main(["experiment", "--out", str(out), *ARGS, f"sft_policy={rm_dir}", "shared_sft=false"]) == 2
    assert "cannot be combined with shared_sft=false" in capsys.readouterr().err
    assert not (out / "seed-0").exists()
