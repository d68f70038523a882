"""DeepSpeed set-up of PPO that needs no DeepSpeed: how the launch's DeepSpeed config is checked
and filled from the PPO options (rl/zero.py), and the refusals at config time. The ZeRO runs
themselves are in tests/optional/test_deepspeed.py (make test-deepspeed)."""

from __future__ import annotations

import json

import pytest
import torch

from seq2seq_rm.config import check_precision
from seq2seq_rm.errors import ConfigError
from seq2seq_rm.rl import zero
from seq2seq_rm.rl.ppo import PPOConfig

SHIPPED = {stage: json.loads(open(f"configs/deepspeed/zero{stage}.json").read()) for stage in (2, 3)}


def _fill(conf, **kw):
    args = dict(micro_batch=4, grad_accum=2, world=8, max_grad_norm=0.5, dtype="float32", hidden_size=64,
                where="ds.json")
    args.update(kw)
    return zero.engine_config(conf, **args)


@pytest.mark.parametrize("stage", [2, 3])
def test_shipped_configs_are_filled_from_the_ppo_options(stage):
    conf = _fill(SHIPPED[stage])
    assert conf["train_micro_batch_size_per_gpu"] == 4
    assert conf["gradient_accumulation_steps"] == 2
    assert conf["train_batch_size"] == 4 * 2 * 8  # DeepSpeed's own consistency rule
    assert conf["gradient_clipping"] == 0.5
    assert conf["bf16"]["enabled"] is False
    assert conf["zero_optimization"]["stage"] == stage
    assert conf["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert conf["zero_allow_untested_optimizer"] is True
    assert '"auto"' not in json.dumps(conf)
    assert SHIPPED[stage]["gradient_clipping"] == "auto"  # the shipped dict itself is not modified
    if stage == 3:
        assert conf["zero_optimization"]["stage3_param_persistence_threshold"] == 640
    assert _fill(SHIPPED[stage], dtype="bfloat16")["bf16"]["enabled"] is True


def test_explicit_values_that_contradict_an_option_are_refused():
    with pytest.raises(ConfigError, match=r"gradient_clipping is 1.0, but PPO sets it from max_grad_norm \(0.5\)"):
        _fill({"gradient_clipping": 1.0})
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu"):
        _fill({"train_micro_batch_size_per_gpu": 16})
    assert _fill({"gradient_clipping": 0.5})["gradient_clipping"] == 0.5  # agreeing is fine


@pytest.mark.parametrize("conf, match", [
    ({"optimizer": {"type": "AdamW"}}, "has a `optimizer` section"),
    ({"scheduler": {"type": "WarmupLR"}}, "has a `scheduler` section"),
    ({"fp16": {"enabled": True}}, "fp16 is not supported"),
    ({"bf16": {"enabled": True}}, "bf16.enabled=true casts the trained models"),
    ({"zero_optimization": {"stage": 4}}, "must be 0, 1, 2 or 3"),
])
def test_configs_ppo_cannot_run_are_refused(conf, match):
    with pytest.raises(ConfigError, match=match):
        zero.check_launch_config(conf, "ds.json", "float32", zero3_init=False)


def test_zero3_init_flag_is_refused_for_zero3_only():
    with pytest.raises(ConfigError, match="zero3_init_flag=true partitions every model"):
        zero.check_launch_config(SHIPPED[3], "ds.json", "float32", zero3_init=True)
    zero.check_launch_config(SHIPPED[2], "ds.json", "float32", zero3_init=True)  # no effect below ZeRO-3


def test_full_bf16_training_is_allowed_only_with_deepspeed_master_weights():
    full = {"the actor": True}
    with pytest.raises(ConfigError, match="rounds away updates"):
        check_precision("bfloat16", full)
    assert zero.master_weights(SHIPPED[2], "bfloat16")  # bf16.enabled auto -> on for dtype=bfloat16
    check_precision("bfloat16", full, master_weights=True)
    assert not zero.master_weights({"bf16": {"enabled": False}}, "bfloat16")
    with pytest.raises(ConfigError):  # float16 has no such escape
        check_precision("float16", full, master_weights=True)


def test_a_deepspeed_launch_is_read_from_accelerates_environment(monkeypatch, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds))
    assert zero.launch_config() == (json.loads(ds.read_text()), str(ds))
    if not zero.installed():
        with pytest.raises(ConfigError, match="deepspeed package is not installed"):
            PPOConfig(policy="p", prompts="x", out="o")
    else:  # the config's own problem, at config time, before any model loads
        with pytest.raises(ConfigError, match="has a `optimizer` section"):
            PPOConfig(policy="p", prompts="x", out="o")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="missing.json .*cannot be read"):
        zero.launch_config()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert zero.launch_config() is None
    PPOConfig(policy="p", prompts="x", out="o")  # no DeepSpeed launch: nothing to check


def test_largest_abs_reads_values_and_propagates_nan():
    params = [torch.nn.Parameter(torch.tensor([1.0, -3.0])), torch.nn.Parameter(torch.tensor([2.0]))]
    assert zero.largest_abs(params) == 3.0
    params.append(torch.nn.Parameter(torch.tensor([float("nan")])))
    assert zero.largest_abs(params) != zero.largest_abs(params)  # NaN


def test_largest_abs_skips_the_padding_of_a_zero3_shard():
    # ZeRO-3: a 3-element weight in one process holds a shard of 4, whose last element is padding
    # that DeepSpeed never writes (read as a weight it looked like a diverged update)
    p = torch.nn.Parameter(torch.empty(0))
    p.ds_tensor, p.ds_numel = torch.tensor([1.0, -2.0, 5.0, 1e30]), 3
    assert zero.largest_abs([p]) == 5.0
