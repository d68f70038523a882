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
