"""Run by tests/test_ppo_distributed.py and tests/optional/test_deepspeed.py under `torchrun
--nproc_per_node 2`: a short PPO run (optionally resumed, optionally with reward normalisation),
then every rank saves its own copy of the actor and critic weights (gathered, under ZeRO-3) and
its reward statistics for comparison. Under DeepSpeed, accelerate reads the launch's DeepSpeed
config from the environment (ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_CONFIG_FILE)."""

from __future__ import annotations

import json
import sys

import torch
from helpers import EvenTokenRM  # tests/ is on sys.path: this script's own folder
from safetensors.torch import save_file

from seq2seq_rm.config import LoraOptions
from seq2seq_rm.models.loading import load_tokenizer
from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer
from seq2seq_rm.rl.rollout import SamplingConfig, VLLMOptions
from seq2seq_rm.rl.zero import gathered


def main(policy: str, prompts: str, out: str, steps: str, resume: str, normalize: str, grad_accum: str = "1",
         engine: str = "hf", variant: str = "") -> None:
    """``variant`` ``lora-bf16``: actor and critic LoRA over bfloat16 storage (under DeepSpeed: its bf16
    with float32 master weights)."""
    torch.set_num_threads(1)
    tok = load_tokenizer(policy)
    cfg = PPOConfig(policy=policy, prompts=prompts, out=out, steps=int(steps), batch_size=4, mini_batch_size=2,
                    ppo_epochs=1, grad_accum=int(grad_accum), actor_lr=1e-3, critic_lr=1e-3, kl_coef=0.0, save_every=0, sample_every=0,
                    resume=resume == "1", normalize_rewards=normalize == "1", sampling=SamplingConfig(max_new_tokens=6), engine=engine,
                    vllm=VLLMOptions(kv_cache_gib=0.25),
                    **({"dtype": "bfloat16", "actor_lora": LoraOptions(enabled=True, r=4, alpha=8),
                        "critic_lora": LoraOptions(enabled=True, r=4, alpha=8)} if variant == "lora-bf16" else {}))
    trainer = PPOTrainer(cfg, reward_model=EvenTokenRM(tok))
    trainer.train()
    rank = trainer.acc.process_index
    actor = trainer.acc.unwrap_model(trainer.actor)
    critic = trainer.acc.unwrap_model(trainer.critic)
    with gathered(actor, critic):
        state = {f"actor.{k}": v.detach().float().clone().contiguous() for k, v in actor.named_parameters()}
        state.update({f"critic.{k}": v.detach().float().clone().contiguous() for k, v in critic.named_parameters()})
    save_file(state, f"{out}.rank{rank}.safetensors", metadata={
        "world": str(trainer.acc.num_processes), "prompts": "|".join(map(str, trainer.prompts_for_step(0))),
        "reward_stats": json.dumps(trainer.reward_stats.state_dict()), "zero_stage": str(trainer.zero_stage)})


if __name__ == "__main__":
    main(*sys.argv[1:10])
