"""PPO in two processes (torchrun, gloo on CPU): replicas stay identical, data is split."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import write_jsonl
from safetensors import safe_open
from safetensors.torch import load_file


def test_two_process_ppo_keeps_replicas_identical(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question number {i}?"} for i in range(16)])
    out = tmp_path / "policy"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(Path(__file__).with_name("dist_ppo_worker.py")), tiny_model_dir, prompts, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = load_file(f"{out}.rank0.safetensors")
    w1 = load_file(f"{out}.rank1.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    meta = [safe_open(f"{out}.rank{r}.safetensors", "pt").metadata() for r in (0, 1)]
    assert meta[0]["world"] == meta[1]["world"] == "2"
    assert meta[0]["prompts"] != meta[1]["prompts"]  # each rank rolled out its own share of the batch
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert not torch.equal(base["model.layers.0.mlp.up_proj.weight"], w0["actor.model.layers.0.mlp.up_proj.weight"])
    assert (out / "model.safetensors").is_file()  # rank 0 wrote the final policy
