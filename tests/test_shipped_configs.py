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


def test_the_8_gpu_7b_configs_load_as_on_their_machine(monkeypatch, tmp_path):
    """configs/qwen7b_8gpu/: read as on the node it is meant for (8 CUDA devices, vLLM installed,
    inside `accelerate launch` with configs/accelerate_deepspeed_zero3.yaml), since the config checks
    look at the machine. The PPO one: bf16 full-model storage is allowed there only because DeepSpeed
    keeps float32 master weights; LoRA keeps the reference free. The SFT/RM ones are checked without
    their trainer_args.deepspeed (building TRL's config with it needs DeepSpeed and a GPU), which
    must name the shipped ZeRO-3 file."""
    import importlib.util

    import torch
    import yaml

    from seq2seq_rm.config import RMTrainConfig
    from seq2seq_rm.rl import rollout, zero
    from seq2seq_rm.sft import SFTRunConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(rollout.importlib.util, "find_spec",
                        lambda name, *a: object() if name in ("vllm", "deepspeed") else real(name, *a))
    monkeypatch.setattr(zero, "installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(CONFIGS / "deepspeed" / "zero3.json"))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false")
    folder = CONFIGS / "qwen7b_8gpu"
    for name, cls in (("sft.yaml", SFTRunConfig), ("rm.yaml", RMTrainConfig)):
        raw = yaml.safe_load((folder / name).read_text())
        assert raw["train"]["trainer_args"].pop("deepspeed") == "configs/deepspeed/zero3.json"
        (tmp_path / name).write_text(yaml.safe_dump(raw))
        cfg = load_config(cls, tmp_path / name)
        assert cfg.train.bf16 and cfg.dtype == "float32"  # DeepSpeed's bf16 with float32 master weights
    ppo = load_config(PPOConfig, folder / "ppo.yaml")
    assert ppo.dtype == "bfloat16" and ppo.engine == "vllm" and ppo.vllm.enable_sleep_mode
    assert ppo.actor_lora.enabled and ppo.gradient_checkpointing
    script = (folder / "run.sh").read_text()
    for name in ("sft.yaml", "rm.yaml", "ppo.yaml", "accelerate_deepspeed_zero3.yaml"):
        assert name in script


def test_every_shipped_option_config_is_checked_above():
    checked = {"smollm2_smoke.yaml", "smollm2_gpu.yaml", "ppo_tiny.yaml"}
    accelerate = {p.name for p in CONFIGS.glob("accelerate_*.yaml")}  # accelerate's own format
    assert {p.name for p in CONFIGS.glob("*.yaml")} == checked | accelerate
    assert {p.name for p in (CONFIGS / "qwen7b_8gpu").iterdir()} == {"sft.yaml", "rm.yaml", "ppo.yaml", "run.sh"}


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
