"""DeepSpeed ZeRO for PPO, for real: two processes on CPU (DeepSpeed's CPU accelerator, gloo),
started with `accelerate launch` and the shipped configs/accelerate_deepspeed_zero{2,3}.yaml
(which point at configs/deepspeed/zero{2,3}.json).

The independent computation is the DDP run of the same steps (tests/test_ppo_distributed.py
checks DDP itself): after 4 PPO steps the ZeRO run's actor and critic weights equal it within
float32 reduction noise. Every minibatch is cut into two micro-batches (grad_accum=2), so the
engines' accumulation boundary is exercised. A ZeRO run stopped after 2 steps and resumed to 4
equals the straight run (DeepSpeed's own per-process optimizer shards are in the checkpoint).

Needs the deepspeed package: `make test-deepspeed` builds .venv-deepspeed and runs these
(marker `deepspeed`); skipped elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_jsonl
from safetensors import safe_open
from safetensors.torch import load_file

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "dist_ppo_worker.py"


def _launch(policy, prompts, out, steps, stage=None, resume=False, port=29610):
    """2 x dist_ppo_worker.py: DDP under torchrun (``stage`` None), or DeepSpeed ZeRO-``stage`` as a
    user launches it: ``accelerate launch --config_file configs/accelerate_deepspeed_zeroN.yaml``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    args = [str(WORKER), policy, prompts, str(out), str(steps), "1" if resume else "0", "0", "2"]
    if stage is None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / f"accelerate_deepspeed_zero{stage}.yaml"), "--num_processes", "2",
               "--main_process_port", str(port)]
    cmd += args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    meta = [safe_open(f"{out}.rank{r}.safetensors", "pt").metadata() for r in (0, 1)]
    return [load_file(f"{out}.rank{r}.safetensors") for r in (0, 1)], meta, proc.stderr


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    prompts = write_jsonl(tmp / "p.jsonl", [{"prompt": f"Question number {i}?"} for i in range(16)])
    (ddp, _), _, _ = _launch(tiny_model_dir, prompts, tmp / "ddp", steps=4, port=29611)
    return tmp, prompts, ddp


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol}"


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_matches_ddp(setup, tiny_model_dir, stage):
    tmp, prompts, ddp = setup
    (w0, w1), meta, _ = _launch(tiny_model_dir, prompts, tmp / f"zero{stage}", steps=4, stage=stage,
                                  port=29620 + stage)
    assert meta[0]["zero_stage"] == str(stage)  # the DeepSpeed path ran, not DDP
    _assert_close(w0, w1, 0.0)  # replicas agree exactly
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(base[key], w0[f"actor.{key}"])  # it trained
    moved = float((ddp[f"actor.{key}"] - base[key]).abs().max())
    assert moved > 1e-3
    _assert_close(w0, ddp, atol=2e-5)  # the same update as DDP, up to float32 reduction order
    assert (tmp / f"zero{stage}" / "model.safetensors").is_file()  # the final policy, gathered


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_resumes_as_if_never_stopped(setup, tiny_model_dir, stage):
    tmp, prompts, _ = setup
    straight = tmp / f"zero{stage}"  # written by test_zero_run_matches_ddp
    if not straight.with_suffix(".rank0.safetensors").is_file():
        _launch(tiny_model_dir, prompts, straight, steps=4, stage=stage, port=29630 + stage)
    r = tmp / f"resumed{stage}"
    _launch(tiny_model_dir, prompts, r, steps=2, stage=stage, port=29640 + stage)
    ckpt = sorted((r.parent / f"{r.name}.run" / "checkpoints").glob("step-*"))[-1]
    assert (ckpt / "deepspeed" / "actor").is_dir() and (ckpt / "deepspeed" / "critic").is_dir()
    (resumed, _), _, _ = _launch(tiny_model_dir, prompts, r, steps=4, stage=stage, resume=True, port=29650 + stage)
    _assert_close(resumed, load_file(f"{straight}.rank0.safetensors"), atol=1e-6)


def _sft(policy, data, out, port, *extra, launcher=("torch.distributed.run", "--nproc_per_node", "2")):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    port_flag = "--master_port" if launcher[0] == "torch.distributed.run" else "--main_process_port"
    cmd = [sys.executable, "-m", *launcher, port_flag, str(port), "-m", "seq2seq_rm.cli", "sft", "--model", policy, "--data", data, "--out", str(out), "limit=32",
           "train.batch_size=4", "train.epochs=1", "train.lr=1e-3", "train.save_steps=2", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def ddp_sft(tiny_model_dir, sample_file, tmp_path_factory):
    return _sft(tiny_model_dir, sample_file, tmp_path_factory.mktemp("sft") / "ddp", 29661,
                "train.trainer_args.use_cpu=true")


@pytest.mark.parametrize("stage", [2, 3])
def test_sft_passes_deepspeed_to_the_trainer_and_matches_ddp(tiny_model_dir, sample_file, tmp_path, ddp_sft, stage):
    """The supervised stages hand trainer_args.deepspeed to the HF Trainer; on CPU the processes are
    joined over gloo first (training._cpu_deepspeed_launch), or each would train alone. Under ZeRO-3
    the saved model is gathered from both processes' shards (trainer.save_model, collective), and
    process 0 alone publishes the folder."""
    out = tmp_path / f"z{stage}"
    z = _sft(tiny_model_dir, sample_file, out, 29662 + stage,
             f"train.trainer_args.deepspeed=configs/deepspeed/zero{stage}.json",
             launcher=("accelerate.commands.launch", "--config_file", f"configs/accelerate_deepspeed_zero{stage}.yaml",
                       "--num_processes", "2"))  # as configs/qwen7b_8gpu/run.sh launches it
    shards = sorted(p.name for p in (tmp_path / f"z{stage}.run" / "checkpoints").rglob("*_optim_states.pt"))
    assert shards and {s.split("_")[3] for s in shards} == {"0", "1"}, shards  # zero_pp_rank_R_...
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert max(float((ddp_sft[k].float() - base[k].float()).abs().max()) for k in base) > 1e-3  # it trained
    assert z.keys() == ddp_sft.keys()
    _assert_close(z, ddp_sft, atol=1e-5)
    assert not list(tmp_path.glob(".z*.tmp-*"))  # no temporary folder left by any process


def test_sft_refuses_deepspeed_with_use_cpu():
    from seq2seq_rm.errors import ConfigError
    from seq2seq_rm.training import check_trainer_args

    with pytest.raises(ConfigError, match="drops DeepSpeed without a word"):
        check_trainer_args({"deepspeed": "configs/deepspeed/zero2.json", "use_cpu": True}, "SFTConfig")


def test_zero3_lora_over_bf16_trains_and_saves_the_merge_in_float32(setup, tiny_model_dir):
    """ZeRO-3 with dtype=bfloat16 (DeepSpeed's bf16, float32 master weights) and LoRA on actor and
    critic (the reference is the actor with adapters off): the run trains the adapters, and the
    saved policy is base + (alpha/r) B A of the gathered weights, merged in float32 (a bf16 sum
    would round a small update away), with config.json saying so."""
    import json

    tmp, prompts, _ = setup
    out = tmp / "z3lora"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate_deepspeed_zero3.yaml"), "--num_processes", "2",
           "--main_process_port", "29681", str(WORKER), tiny_model_dir, prompts, str(out), "3", "0", "0", "2", "hf",
           "lora-bf16"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    w = load_file(f"{out}.rank0.safetensors")
    policy = load_file(str(out / "model.safetensors"))
    meta = json.loads((out / "policy.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["saved_dtype"] == "float32"
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert all(v.dtype == torch.float32 for v in policy.values())
    for name in ("model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj"):
        prefix = f"actor.base_model.model.{name}"
        lora_b = w[f"{prefix}.lora_B.default.weight"]
        assert float(lora_b.abs().max()) > 1e-3  # the adapters trained (they start at zero)
        merged = w[f"{prefix}.base_layer.weight"] + lora_b @ w[f"{prefix}.lora_A.default.weight"] * (8 / 4)
        assert torch.allclose(policy[f"{name}.weight"], merged, atol=1e-6), name


def test_sft_refuses_lora_under_zero3_before_training(tiny_model_dir, sample_file, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate_deepspeed_zero3.yaml",
           "--num_processes", "2", "--main_process_port", "29668", "-m", "seq2seq_rm.cli", "sft", "--model",
           tiny_model_dir, "--data", sample_file, "--out", str(tmp_path / "out"), "limit=16", "train.lora.enabled=true",
           "train.trainer_args.deepspeed=configs/deepspeed/zero3.json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    assert "LoRA under DeepSpeed ZeRO-3 is not supported by the supervised stages" in proc.stderr
    assert not (tmp_path / "out").exists() and not list((tmp_path / "out.run").rglob("checkpoint-*"))
