"""Options are checked when they are read, with one precedence rule for every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import write_jsonl

import seq2seq_rm.experiment.run as experiment_run
from seq2seq_rm.cli import main, parse_args
from seq2seq_rm.config import ExtractionConfig, RMTrainConfig, TrainOptions, load_config
from seq2seq_rm.errors import ConfigError
from seq2seq_rm.experiment import ExperimentConfig
from seq2seq_rm.rl.ppo import PPOConfig


@pytest.mark.parametrize("cls, override, message", [
    (RMTrainConfig, "extraction.rematch=zerro", r"extraction.rematch must be one of zero, positive, not 'zerro' "
                                                r"\(did you mean 'zero'\?\)"),
    (RMTrainConfig, "kind=scalr", "kind must be one of seq2seq, scalar"),
    (RMTrainConfig, "train.truncation=cut", "train.truncation must be one of truncate, skip"),
    (PPOConfig, "kl_estimator=k9", "kl_estimator must be one of k1, k2, k3"),
    (PPOConfig, "sampling.top_p=1.5", "sampling.top_p must be <= 1"),
    (PPOConfig, "batch_size=6", "batch_size .6. must be a multiple of mini_batch_size"),
    (ExperimentConfig, "ppo.kl_estimator=k9", "ppo.kl_estimator must be one of"),
    (ExperimentConfig, "ablation=[{magnitude: probb}]", r"ablation\[0\].magnitude must be one of constant, prob"),
    (ExperimentConfig, "ablation=[{rematch: zero, colour: red}]", r"unknown option 'ablation\[0\].colour'"),
    (ExperimentConfig, "tasks=[safety, chess]", "unknown task.*chess"),
    (ExperimentConfig, "ppo.policy=somewhere", "ppo.policy is set by the experiment"),
])
def test_a_bad_value_stops_when_the_config_is_read(cls, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, [override])


@pytest.mark.parametrize("flag, value, option", [
    ("--lr", "-1", "train.lr must be > 0"), ("--batch-size", "0", "train.batch_size must be >= 1"),
    ("--epochs", "-1", "train.epochs must be > 0"), ("--max-length", "0", "train.max_length must be >= 9"),
])
def test_bad_training_flags_stop_before_any_work(tiny_model_dir, sample_file, tmp_path, caplog, flag, value, option):
    out = tmp_path / "rm"
    code = main(["rm", "train", "--model", tiny_model_dir, "--data", sample_file, "--out", str(out), flag, value])
    assert code == 2 and option in caplog.text and not out.exists()


def test_ppo_option_typos_stop_before_any_model_is_loaded(tmp_path, caplog):
    code = main(["ppo", "--policy", "nowhere", "--rm", "nowhere", "--prompts", "none.jsonl", "--out",
                 str(tmp_path / "p"), "kl_estimator=k9"])
    assert code == 2 and "kl_estimator must be one of k1, k2, k3" in caplog.text  # not "model not found"


def test_precedence_is_defaults_then_yaml_then_flags_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"kind": "scalar", "train": {"lr": 0.1, "epochs": 3}, "mapping": {"identity_ratio": 0.25}}))
    cfg = load_config(RMTrainConfig, f, ["train.lr=1e-4", "extraction.rematch=positive"],
                      {"train.epochs": 5.0, "train.lr": 0.5, "train.seed": None})
    assert cfg.kind == "scalar" and cfg.train.lr == 1e-4 and cfg.train.epochs == 5.0 and cfg.train.seed == 0
    assert cfg.mapping.identity_ratio == 0.25 and cfg.extraction.rematch == "positive"


def test_a_yaml_group_keeps_the_defaults_it_does_not_mention(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"sft": {"epochs": 1}, "ppo": {"steps": 2}}))
    cfg = load_config(ExperimentConfig, f)
    assert cfg.sft.epochs == 1 and cfg.sft.lr == ExperimentConfig().sft.lr == 3e-3  # not TrainOptions' 3e-4
    assert cfg.ppo.steps == 2 and cfg.ppo.actor_lr == ExperimentConfig().ppo.actor_lr == 2e-4


@pytest.fixture
def captured_experiment(monkeypatch):
    """Runs the CLI's demo/experiment commands up to the experiment itself, and records its config."""
    seen = {}

    def fake_run(cfg, out, overwrite=False, resume=False):
        seen["cfg"], seen["out"], seen["overwrite"] = cfg, out, overwrite
        report = Path(out) / "report.json"  # what the CLI reads its closing headline from
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"splits": {}, "rm_eval": {}}))
        return report.with_name("report.html")

    monkeypatch.setattr(experiment_run, "run_experiment", fake_run)
    monkeypatch.setattr("seq2seq_rm.experiment.run_experiment", fake_run)
    return seen


def test_demo_and_experiment_flags_beat_the_yaml(captured_experiment, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"seeds": [1], "ablation": [{"magnitude": "prob"}]}))
    assert main(["demo", "--config", str(f), "--seed", "5", "--out", str(tmp_path / "d")]) == 0
    assert captured_experiment["cfg"].seeds == [5]  # the flag wins over the YAML
    demo = captured_experiment["cfg"]  # the demo's preset: the experiment's stages, small and short
    assert demo.size == "tiny" and demo.sft_rows == 400 and demo.ppo.steps == 40 and demo.ppo.actor_lr == 1e-4
    assert demo.sft.batch_size == 16 and demo.ppo.sampling.temperature == 1.0  # what the preset leaves alone
    f.write_text(yaml.safe_dump({"seeds": [1], "ablation": [{"magnitude": "prob"}], "size": "mini"}))
    assert main(["demo", "--config", str(f), "--out", str(tmp_path / "d")]) == 0
    assert captured_experiment["cfg"].size == "mini"  # the YAML wins over the demo's preset
    assert main(["experiment", "--config", str(f), "--out", str(tmp_path / "e")]) == 0
    exp = captured_experiment["cfg"]
    assert exp.sft_rows == {"safety": 600, "summarize": 2000, "instruct": 1000} and exp.ppo.steps == 160
    assert main(["experiment", "--config", str(f), "--out", str(tmp_path / "e")]) == 0
    assert captured_experiment["cfg"].seeds == [1]  # the YAML wins over the command's preset (0, 1, 2)
    assert captured_experiment["cfg"].ablation == [{"magnitude": "prob"}]
    assert main(["experiment", "--out", str(tmp_path / "e"), "ablation=[]", "--seeds", "2"]) == 0
    assert captured_experiment["cfg"].ablation == [] and captured_experiment["cfg"].seeds == [0, 1]
    f.write_text(yaml.safe_dump({"seeds": [0]}))
    assert main(["experiment", "--config", str(f), "--out", str(tmp_path / "e"), "--tasks", "instruct"]) == 0
    assert captured_experiment["cfg"].seeds == [0] and captured_experiment["cfg"].tasks == ["instruct"]
    assert len(captured_experiment["cfg"].ablation) == 4  # the experiment's preset ablation


def test_overrides_may_stand_anywhere_among_the_flags(tmp_path):
    a = parse_args(["ppo", "save_every=1", "--out", "X", "actor_lr=1e-5", "--steps", "3", "sampling.top_k=4"])
    assert a.out == "X" and a.steps == 3 and a.overrides == ["save_every=1", "actor_lr=1e-5", "sampling.top_k=4"]
    cfg = load_config(PPOConfig, None, a.overrides, {"out": a.out, "steps": a.steps})
    assert cfg.save_every == 1 and cfg.actor_lr == 1e-5 and cfg.sampling.top_k == 4 and cfg.steps == 3
    with pytest.raises(SystemExit):
        parse_args(["ppo", "--out", "X", "--bogus", "3"])
    with pytest.raises(SystemExit):
        parse_args(["generate", "--model", "m", "--prompts", "p", "--out", "o", "top_k=3"])  # no config here


def test_options_prints_allowed_values_and_defaults(capsys):
    assert main(["options", "rm-train"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("extraction.rematch"))
    assert "'zero'" in line and "[zero | positive]" in line
    assert "[> 0]" in next(ln for ln in out.splitlines() if ln.startswith("train.lr "))
    assert main(["options", "experiment"]) == 0
    out = capsys.readouterr().out
    assert "ppo.actor_lr" in out and "0.0002" in out and "ppo.policy" not in out  # set per arm, not an option


def test_split_and_subset_reach_the_loaders(tmp_path, sample_rows):
    import datasets

    from seq2seq_rm.data.loading import load_preferences

    folder = tmp_path / "ds"
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in sample_rows[:6]]
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows[:4]),
                          "test_prefs": datasets.Dataset.from_list(rows[4:])}).save_to_disk(str(folder))
    records, _ = load_preferences(folder, split="test_prefs")
    assert [r.prompt for r in records] == [r["prompt"] for r in rows[4:]]
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ConfigError, match="single table"):
        load_preferences(jsonl, split="test")
    with pytest.raises(ConfigError, match="hub datasets only"):
        load_preferences(jsonl, subset="harmless-base")
    cfg = load_config(RMTrainConfig, None, ["split=test_prefs"], {"data": str(folder)})
    assert cfg.split == "test_prefs"
    assert parse_args(["rm", "eval", "--rm", "r", "--data", "d", "--split", "x"]).split == "x"


def test_logs_go_to_stderr_unwrapped_and_results_to_stdout(tmp_path, capsys):
    deep = tmp_path / ("a-rather-long-folder-name-" * 6) / "export"
    assert main(["tasks", "export", "instruct", "--split", "test", "--n", "2", "--out", str(deep)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert any(str(deep / "preferences.jsonl") in line for line in captured.err.splitlines())  # one line, unwrapped
    assert main(["tasks", "export", "chess", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'chess'" in err and "Traceback" not in err


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainOptions(lr=-1)
    with pytest.raises(ConfigError, match="magnitude must be one of"):
        ExtractionConfig(magnitude="linear")
    with pytest.raises(ConfigError, match="resume and overwrite"):
        PPOConfig(resume=True, overwrite=True)
