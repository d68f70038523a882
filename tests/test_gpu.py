"""A short SFT -> RM -> PPO -> evaluation on a CUDA device (marker ``gpu``; ``make test-gpu``).

Skipped where no CUDA device is present (this project's CI machines have none: these tests
have not been run by the project; the README says so). Every stage must put its work on the
GPU, in float32 and in bfloat16 with LoRA and gradient checkpointing.
"""

from __future__ import annotations

import json

import pytest
import torch

from seq2seq_rm.cli import main

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

SMALL = ["--seeds", "1", "size=tiny", "tasks=[instruct]", "train_pairs=16", "sft_rows=16", "ppo_prompts=16",
         "test_prompts=4", "ood_prompts=4", "sft.epochs=1", "rm.epochs=1", "ppo.steps=2", "ppo.batch_size=4",
         "ppo.mini_batch_size=2", "ppo.sampling.max_new_tokens=8", "eval_max_new_tokens=8", "n_boot=200",
         "ablation=[]"]
HALF = ["dtype=bfloat16", "sft.lora.enabled=true", "rm.lora.enabled=true", "ppo.actor_lora.enabled=true",
        "ppo.critic_lora.enabled=true", "sft.gradient_checkpointing=true", "rm.gradient_checkpointing=true",
        "ppo.gradient_checkpointing=true"]


@pytest.mark.parametrize("precision", [[], HALF], ids=["float32", "bf16-lora-checkpointing"])
def test_the_pipeline_runs_on_the_gpu(precision, tmp_path):
    torch.cuda.reset_peak_memory_stats()
    out = tmp_path / "exp"
    assert main(["experiment", "--out", str(out), *SMALL, *precision]) == 0
    assert torch.cuda.max_memory_allocated() > 0  # the stages ran on the device, not on the CPU
    report = json.loads((out / "report.json").read_text())
    assert report["splits"]["test"]["win_rates"]["seq2seq vs scalar"]["n"] == 4
    rows = [json.loads(x) for x in (out / "seed-0/ppo-seq2seq.run/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["kl"] == r["kl"] for r in rows)  # two steps, finite KL
