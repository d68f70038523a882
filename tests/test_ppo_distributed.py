"""PPO in two processes (torchrun, gloo on CPU): replicas stay identical, data is split, and a
run with reward normalisation resumes as if never stopped (statistics shared by all ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import write_jsonl
from safetensors import safe_open
from safetensors.torch import load_file


def _torchrun(policy, prompts, out, steps, resume=False, normalize=True, port=29533):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(Path(__file__).with_name("dist_ppo_worker.py")), policy, prompts, str(out), str(steps),
           "1" if resume else "0", "1" if normalize else "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [load_file(f"{out}.rank{r}.safetensors") for r in (0, 1)], \
        [safe_open(f"{out}.rank{r}.safetensors", "pt").metadata() for r in (0, 1)]


def test_two_process_ppo_keeps_replicas_identical_and_resumes_as_if_never_stopped(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question number {i}?"} for i in range(16)])
    straight = tmp_path / "straight"
    (w0, w1), meta = _torchrun(tiny_model_dir, prompts, straight, steps=4)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert meta[0]["world"] == meta[1]["world"] == "2"
    assert meta[0]["prompts"] != meta[1]["prompts"]  # each rank rolled out its own share of the batch
    stats = [json.loads(m["reward_stats"]) for m in meta]
    assert stats[0] == stats[1] and stats[0]["count"] == 4 * 4 * 2  # every rank saw every rank's rewards
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert not torch.equal(base["model.layers.0.mlp.up_proj.weight"], w0["actor.model.layers.0.mlp.up_proj.weight"])
    assert (straight / "model.safetensors").is_file()  # rank 0 wrote the final policy

    resumed = tmp_path / "resumed"
    _torchrun(tiny_model_dir, prompts, resumed, steps=2, port=29534)
    (r0, r1), rmeta = _torchrun(tiny_model_dir, prompts, resumed, steps=4, resume=True, port=29535)
    for k in w0:
        assert torch.allclose(r0[k], w0[k], atol=1e-6) and torch.allclose(r1[k], w1[k], atol=1e-6), k
    assert [json.loads(m["reward_stats"]) for m in rmeta] == stats
