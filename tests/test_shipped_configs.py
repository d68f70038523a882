"""The configs the project ships load with today's options (a renamed or removed option fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2seq_rm.config import load_config
from seq2seq_rm.experiment import ExperimentConfig
from seq2seq_rm.rl.ppo import PPOConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,cls", [("smollm2_smoke.yaml", ExperimentConfig), ("smollm2_gpu.yaml", ExperimentConfig),
                                      ("ppo_tiny.yaml", PPOConfig)])
def test_a_shipped_config_loads(name, cls):
    cfg = load_config(cls, CONFIGS / name)
    assert isinstance(cfg, cls)


def test_every_shipped_option_config_is_checked_above():
    checked = {"smollm2_smoke.yaml", "smollm2_gpu.yaml", "ppo_tiny.yaml"}
    accelerate = {p.name for p in CONFIGS.glob("accelerate_*.yaml")}  # accelerate's own format
    assert {p.name for p in CONFIGS.glob("*.yaml")} == checked | accelerate


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("accelerate_*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_name_files_that_exist_and_deepspeed_configs_ppo_accepts(path):
    """accelerate's own format; a DeepSpeed one points at a JSON file (relative to the repository
    root, where the README's commands run) that PPO fills without complaint."""
    import json

    import yaml

    from seq2seq_rm.rl import zero

    conf = yaml.safe_load(path.read_text())
    assert conf["distributed_type"] in ("MULTI_GPU", "DEEPSPEED")
    if conf["distributed_type"] != "DEEPSPEED":
        return
    ds = conf["deepspeed_config"]
    assert ds["zero3_init_flag"] is False  # PPO refuses it (the reference and RM must load whole)
    ds_json = json.loads((CONFIGS.parent / ds["deepspeed_config_file"]).read_text())
    stage = int(path.stem[-1])
    assert zero.zero_stage(ds_json) == stage
    filled = zero.engine_config(ds_json, micro_batch=2, grad_accum=1, world=8, max_grad_norm=1.0, dtype="bfloat16",
                                hidden_size=4096, where=str(path))
    assert filled["bf16"]["enabled"] is True and filled["train_batch_size"] == 16
