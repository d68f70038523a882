"""PPO with token-level rewards: one loop for the seq2seq RM and the scalar baseline.

Read top to bottom: ``PPOConfig`` (every option, with help), then ``PPOTrainer.train``,
which repeats four hooks per step (safe-rlhf's split):

    rollout  -> sample responses from the actor (generation engine, KV cache)
    rewards  -> RM token rewards (B, T): dense for seq2seq, last-token for scalar
    shape    -> actor/ref log-probs and values in one forward pass each;
                R_t = r_t - beta * KL_t; GAE; advantage whitening
    update   -> ppo_epochs x minibatches of clipped policy + clipped value losses

The maths lives in ``rl/losses.py`` as pure tensor functions. Runs survive: atomic
checkpoints (weights, optimizers, schedulers, KL controller, reward statistics, RNG,
step) every ``save_every`` steps and on Ctrl-C; ``resume=true`` continues a killed run
as if it had never stopped (prompt order and sampling seeds are functions of the step).
The same code runs under ``torchrun`` / ``accelerate launch`` with several processes
(each takes its own share of every prompt batch; gradients are averaged by DDP).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import LoraOptions, TemplateConfig, opt, to_dict
from ..errors import ConfigError, Seq2SeqRMError
from ..io import atomic_dir, atomic_write_json
from ..sft import read_sft_template
from . import losses as L
from .rollout import SamplingConfig

log = logging.getLogger(__name__)

POLICY_META = "policy.json"


@dataclass
class PPOConfig:
    policy: str = opt("", "SFT policy folder (also the frozen reference)")
    rm: str = opt("", "reward model folder (seq2seq or scalar), from `seq2seq-rm rm train`")
    prompts: str = opt("", "JSONL/JSON/Parquet/datasets prompts with a `prompt` field (string or chat messages)")
    out: str = opt("", "final policy folder; checkpoints, metrics and samples go to OUT.run/ beside it")
    critic_init: str = opt("policy", "initialise the critic from the policy or from the rm")
    steps: int = opt(20, "PPO iterations (each: one rollout batch, then ppo_epochs of updates)")
    batch_size: int = opt(16, "prompts per rollout batch, per process")
    mini_batch_size: int = opt(8, "sequences per optimiser step, per process")
    grad_accum: int = opt(1, "micro-batches per minibatch (gradient accumulation)")
    ppo_epochs: int = opt(2, "passes over each rollout batch")
    actor_lr: float = opt(1e-5, "actor learning rate")
    critic_lr: float = opt(5e-6, "critic learning rate")
    warmup_steps: int = opt(0, "linear learning-rate warm-up, in optimiser steps")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    kl_coef: float = opt(0.02, "beta: weight of the per-token KL penalty in the reward")
    kl_estimator: str = opt("k1", "per-token KL estimator in the reward: k1 | k2 | k3")
    adaptive_kl: bool = opt(False, "adapt beta towards kl_target (Ziegler et al. 2019)")
    kl_target: float = opt(6.0, "adaptive KL: target KL per sequence")
    kl_horizon: int = opt(10000, "adaptive KL: horizon in sequences")
    gamma: float = opt(1.0, "discount")
    lam: float = opt(0.95, "GAE lambda")
    clip_ratio: float = opt(0.2, "PPO ratio clip")
    value_clip: float | None = opt(5.0, "value clip in reward units (null: off)")
    reward_clip: float | None = opt(50.0, "clip RM token rewards to [-c, c] (null: off)")
    normalize_rewards: bool = opt(False, "scale RM rewards by a running std of sequence rewards")
    whiten_advantages: bool = opt(True, "whiten advantages over the batch")
    vf_coef: float = opt(1.0, "weight of the value loss (separate optimiser; scales its gradient)")
    max_prompt_length: int = opt(256, "prompts longer than this (in tokens) are skipped and counted")
    sampling: SamplingConfig = opt(SamplingConfig(), "rollout sampling")
    engine: str = opt("hf", "generation engine: hf | vllm (GPU, optional extra)")
    bf16: bool = opt(False, "bf16 autocast for forward passes in training")
    actor_lora: LoraOptions = opt(LoraOptions(), "LoRA for the actor (merged into the saved policy)")
    critic_lora: LoraOptions = opt(LoraOptions(), "LoRA for the critic backbone")
    seed: int = opt(0, "seed for prompt order, sampling and minibatch order")
    save_every: int = opt(10, "checkpoint every N steps (0: only at the end / on Ctrl-C)")
    keep_checkpoints: int = opt(2, "checkpoints kept on disk")
    sample_every: int = opt(5, "save sample responses with their token rewards every N steps")
    n_samples: int = opt(4, "responses saved per sample dump")
    resume: bool = opt(False, "continue from the latest checkpoint in OUT.run/checkpoints")
    trust_remote_code: bool = opt(False, "allow custom model code")
    template: TemplateConfig | None = opt(None, "prompt layout; default: the policy folder's policy.json/sft.json")


# --------------------------------------------------------------------------------------
# Forward passes: [left-padded prompt | right-padded response], one slice for the batch
# --------------------------------------------------------------------------------------


def _inputs(prompt_ids, prompt_mask, response_ids, response_mask):
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention = torch.cat([prompt_mask, response_mask], dim=1).long()
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention, position_ids


def policy_logits(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=1.0) -> torch.Tensor:
    """(B, T, V) logits; ``[:, t]`` is the distribution of response token t (state s_t).

    Divided by the sampling temperature, so the log-probs are those of the policy that
    actually sampled the responses (otherwise the PPO ratio is off from step one).
    """
    input_ids, attention, position_ids = _inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    t = response_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=t + 1)
    logits = out.logits[:, :t].float()
    return logits / temperature if temperature != 1.0 else logits


def critic_values(critic, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """(B, T) values V(s_t): read at the position just before response token t."""
    input_ids, attention, position_ids = _inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    p, t = prompt_ids.shape[1], response_ids.shape[1]
    return critic(input_ids=input_ids, attention_mask=attention, position_ids=position_ids)[:, p - 1 : p - 1 + t]


@dataclass
class Batch:
    """One rollout batch and everything computed from it; per-token tensors are (B, T)."""

    prompts: list
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    texts: list[str]
    finished: torch.Tensor
    rm_rewards: torch.Tensor | None = None
    logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    shaped: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    def select(self, idx: torch.Tensor) -> Batch:
        def pick(x):
            return x[idx] if isinstance(x, torch.Tensor) else x

        return Batch(**{k: pick(v) for k, v in self.__dict__.items() if k not in ("prompts", "texts")},
                     prompts=[self.prompts[i] for i in idx.tolist()], texts=[self.texts[i] for i in idx.tolist()])


def _check_finite(name: str, x: torch.Tensor, step: int, ckpt: Path | None) -> None:
    if not torch.isfinite(x).all():
        where = f"; the last good checkpoint is {ckpt}" if ckpt else "; no checkpoint was written yet"
        raise Seq2SeqRMError(f"non-finite {name} at step {step} (NaN or inf): stopping{where}")


class PPOTrainer:
    """Actor, critic, frozen reference and reward model, and the loop that trains them."""

    def __init__(self, cfg: PPOConfig, accelerator=None, reward_model=None):
        """``reward_model``: any object with the ``RewardModel`` interface, used instead of loading
        ``cfg.rm`` (custom rewards, tests). It must score the policy's token ids."""
        from accelerate import Accelerator

        from ..data.loading import load_prompts
        from ..models.loading import load_causal_lm, load_tokenizer
        from ..models.lora import apply_lora
        from ..models.value import ValueModel
        from ..rewards import load_reward_model
        from .rollout import make_engine

        for name in ("policy", "prompts", "out") + (("rm",) if reward_model is None else ()):
            if not getattr(cfg, name):
                raise ConfigError(f"--{name} is required")
        if cfg.critic_init not in ("policy", "rm"):
            raise ConfigError(f"critic_init must be policy or rm, not {cfg.critic_init!r}")
        if cfg.batch_size % cfg.mini_batch_size or cfg.mini_batch_size % cfg.grad_accum:
            raise ConfigError("batch_size must be a multiple of mini_batch_size, and mini_batch_size of grad_accum")
        self.cfg = cfg
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.out = Path(cfg.out)
        self.run_dir = self.out.parent / (self.out.name + ".run")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = self.acc.device
        self._stop = False

        self.tokenizer = load_tokenizer(cfg.policy, trust_remote_code=cfg.trust_remote_code)
        self.template = cfg.template or read_sft_template(cfg.policy) or TemplateConfig()
        self.rm = reward_model or load_reward_model(cfg.rm, device=self.device, trust_remote_code=cfg.trust_remote_code)
        _check_same_tokenizer(self.tokenizer, self.rm.tokenizer, cfg.policy, cfg.rm)

        torch.manual_seed(cfg.seed)  # value head and LoRA init
        actor = load_causal_lm(cfg.policy, trust_remote_code=cfg.trust_remote_code)
        self.ref = load_causal_lm(cfg.policy, trust_remote_code=cfg.trust_remote_code).to(self.device).eval()
        self.ref.requires_grad_(False)
        critic_from = cfg.policy if cfg.critic_init == "policy" else cfg.rm
        if cfg.critic_init == "rm":
            _check_same_tokenizer(self.tokenizer, load_tokenizer(cfg.rm), cfg.policy, cfg.rm)
        critic = ValueModel.from_folder(critic_from, cfg.trust_remote_code)
        if cfg.actor_lora.enabled:
            lo = cfg.actor_lora
            actor = apply_lora(actor, lo.r, lo.alpha, lo.dropout, lo.target_modules)
        if cfg.critic_lora.enabled:
            lo = cfg.critic_lora
            critic.backbone = apply_lora(critic.backbone, lo.r, lo.alpha, lo.dropout, lo.target_modules,
                                         task_type="FEATURE_EXTRACTION")
        opt_a = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=cfg.actor_lr,
                                  weight_decay=cfg.weight_decay)
        opt_c = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=cfg.critic_lr,
                                  weight_decay=cfg.weight_decay)

        def warmup(i):
            return min(1.0, (i + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0

        sch_a = torch.optim.lr_scheduler.LambdaLR(opt_a, warmup)
        sch_c = torch.optim.lr_scheduler.LambdaLR(opt_c, warmup)
        self.actor, self.critic, self.opt_a, self.opt_c = self.acc.prepare(actor, critic, opt_a, opt_c)
        self.sch_a, self.sch_c = sch_a, sch_c
        self.engine = make_engine(cfg.engine, self.acc.unwrap_model(self.actor), self.tokenizer, self.template)
        self.kl_ctl = (
            L.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
            if cfg.adaptive_kl else L.FixedKLController(cfg.kl_coef)
        )
        self.reward_stats = L.RunningMoments()

        records, report = load_prompts(cfg.prompts)
        self.prompts, n_long = self._filter_long_prompts([r.prompt for r in records])
        if n_long:
            report.skipped[f"longer than max_prompt_length={cfg.max_prompt_length} tokens"] = n_long
            report.kept -= n_long
        if not self.prompts:
            raise Seq2SeqRMError(f"{cfg.prompts}: no usable prompts ({report.summary()})")
        self.prompt_report = report
        self.step = 0

    # ---------------------------------------------------------------- data
    def _filter_long_prompts(self, prompts):
        from ..data.templates import encode_text, render_prompt, resolve_style

        style = resolve_style(self.template, self.tokenizer)
        kept = [p for p in prompts
                if len(encode_text(render_prompt(p, self.template, self.tokenizer, style), self.tokenizer, style))
                <= self.cfg.max_prompt_length]
        return kept, len(prompts) - len(kept)

    def prompts_for_step(self, step: int) -> list:
        """This process's prompts for ``step``: a seeded permutation per pass over the data, so the
        order depends only on (seed, step) and a resumed run sees exactly the same prompts."""
        n, world = len(self.prompts), self.acc.num_processes
        per_step = self.cfg.batch_size * world
        start = step * per_step
        picked = []
        for k in range(start, start + per_step):
            epoch, i = divmod(k, n)
            perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            picked.append(self.prompts[perm[i]])
        rank = self.acc.process_index
        return picked[rank * self.cfg.batch_size : (rank + 1) * self.cfg.batch_size]

    # ---------------------------------------------------------------- hooks
    def rollout(self, step: int) -> Batch:
        prompts = self.prompts_for_step(step)
        sampling = SamplingConfig(**{**to_dict(self.cfg.sampling),
                                     "seed": _mix(self.cfg.seed, step, self.acc.process_index)})
        self.actor.eval()
        r = self.engine.generate(prompts, sampling)
        return Batch(prompts=prompts, prompt_ids=r.prompt_ids.to(self.device), prompt_mask=r.prompt_mask.to(self.device),
                     response_ids=r.response_ids.to(self.device), response_mask=r.response_mask.to(self.device),
                     texts=r.texts, finished=r.finished)

    @torch.no_grad()
    def rewards(self, b: Batch) -> None:
        tr = self.rm.token_rewards(b.prompts, b.response_ids, b.response_mask)
        b.rm_rewards = tr.rewards.to(self.device).float()
        _check_finite("reward", b.rm_rewards, self.step, self._latest_checkpoint())

    @torch.no_grad()
    def shape(self, b: Batch) -> None:
        cfg = self.cfg
        args = (b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        with self._autocast():
            logits = policy_logits(self.actor, *args, temperature=self._temperature)
            b.logp = L.logprobs_from_logits(logits, b.response_ids)
            b.entropy = L.entropy_from_logits(logits)
            del logits
            ref_logits = policy_logits(self.ref, *args, temperature=self._temperature)
            b.ref_logp = L.logprobs_from_logits(ref_logits, b.response_ids)
            b.values = critic_values(self.critic, *args).float()
        mask = b.response_mask
        r = b.rm_rewards
        if cfg.normalize_rewards:
            self.reward_stats.update(r.sum(-1))
            r = r / max(self.reward_stats.std, 1e-6)
        b.shaped, b.kl = L.shape_rewards(r, b.logp, b.ref_logp, mask, self.kl_ctl.value, cfg.kl_estimator,
                                         cfg.reward_clip)
        b.advantages, b.returns = L.gae(b.shaped, b.values * mask, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            b.advantages = L.masked_whiten(b.advantages, mask)

    def update(self, b: Batch) -> dict:
        cfg = self.cfg
        self.actor.train()
        self.critic.train()
        stats: dict[str, list[float]] = {}
        gen = torch.Generator().manual_seed(_mix(cfg.seed, self.step, 7919))
        micro = cfg.mini_batch_size // cfg.grad_accum
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(len(b.prompts), generator=gen)
            for start in range(0, len(perm), cfg.mini_batch_size):
                self.opt_a.zero_grad(set_to_none=True)
                self.opt_c.zero_grad(set_to_none=True)
                for m0 in range(start, start + cfg.mini_batch_size, micro):
                    mb = b.select(perm[m0 : m0 + micro].to(b.response_ids.device))
                    args = (mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
                    with self._autocast():
                        logits = policy_logits(self.actor, *args, temperature=self._temperature)
                        logp = L.logprobs_from_logits(logits, mb.response_ids)
                        values = critic_values(self.critic, *args)
                    pl, ps = L.policy_loss(logp, mb.logp, mb.advantages, mb.response_mask, cfg.clip_ratio)
                    vl, vs = L.value_loss(values.float(), mb.values, mb.returns, mb.response_mask, cfg.value_clip)
                    _check_finite("loss", pl.detach() + vl.detach(), self.step, self._latest_checkpoint())
                    self.acc.backward(pl / cfg.grad_accum)
                    self.acc.backward(cfg.vf_coef * vl / cfg.grad_accum)
                    for k, v in {"policy_loss": pl.item(), "value_loss": vl.item(), **ps,
                                 **{f"value_{k}": v for k, v in vs.items()}}.items():
                        stats.setdefault(k, []).append(float(v))
                self.acc.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
                self.acc.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.opt_a.step()
                self.opt_c.step()
                self.sch_a.step()
                self.sch_c.step()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    @property
    def _temperature(self) -> float:
        s = self.cfg.sampling
        return s.temperature if s.do_sample and s.temperature > 0 else 1.0

    def _autocast(self):
        if not self.cfg.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # ---------------------------------------------------------------- the loop
    def train(self) -> Path:
        cfg = self.cfg
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / "config.json", to_dict(cfg))
        if cfg.resume:
            self.load_checkpoint()
        logger = _MetricsLogger(self.run_dir, self.step, enabled=self.acc.is_main_process)
        log.info("PPO: %d prompts (%s), %d steps from step %d, %d process(es), RM kind %s",
                 len(self.prompts), self.prompt_report.summary(), cfg.steps, self.step, self.acc.num_processes,
                 self.rm.kind)
        previous = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        bar = _progress(cfg.steps, self.step, enabled=self.acc.is_main_process)
        try:
            while self.step < cfg.steps and not self._stop:
                t = {}
                t0 = time.perf_counter()
                b = self.rollout(self.step)
                t["generate"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                self.rewards(b)
                t["reward"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                self.shape(b)
                t["forward"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                train_stats = self.update(b)
                t["train"] = time.perf_counter() - t0
                metrics = self._metrics(b, train_stats, t)
                self.kl_ctl.update(metrics["kl"], cfg.batch_size * self.acc.num_processes)
                self.step += 1
                logger.log(self.step, metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['rm_reward']:+.2f}", kl=f"{metrics['kl']:.3f}",
                                len=f"{metrics['response_length']:.1f}", gen=f"{t['generate']:.1f}s",
                                train=f"{t['train']:.1f}s")
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._dump_samples(b)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
            self.save_checkpoint()
            if self._stop and self.step < cfg.steps:
                log.warning("interrupted: checkpoint saved at step %d; rerun with resume=true to continue", self.step)
                raise KeyboardInterrupt
            self.save_policy()
        finally:
            bar.close()
            logger.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.out

    def _on_sigint(self, signum, frame):
        if self._stop:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("Ctrl-C: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)")
        self._stop = True

    def _metrics(self, b: Batch, train_stats: dict, t: dict) -> dict:
        mask = b.response_mask.float()
        n = mask.sum(-1)
        local = {
            "rm_reward": b.rm_rewards.sum(-1).mean(),
            "rm_reward_per_token": (b.rm_rewards.sum(-1) / n.clamp(min=1)).mean(),
            "kl": (b.kl * mask).sum(-1).mean(),
            "shaped_return": (b.shaped * mask).sum(-1).mean(),
            "response_length": n.mean(),
            "finished": b.finished.float().mean().to(self.device),
            "entropy": L.masked_mean(b.entropy, b.response_mask),
            "value_mean": L.masked_mean(b.values, b.response_mask),
            "advantage_abs": L.masked_mean(b.advantages.abs(), b.response_mask),
        }
        stacked = torch.stack([v.float().to(self.device) for v in local.values()])
        stacked = self.acc.reduce(stacked, reduction="mean")
        m = {k: float(v) for k, v in zip(local, stacked.tolist(), strict=True)}
        m.update(train_stats)
        m["kl_coef"] = float(self.kl_ctl.value)
        m.update({f"time_{k}": v for k, v in t.items()})
        return m

    def _dump_samples(self, b: Batch) -> None:
        if not self.acc.is_main_process:
            return
        rows = []
        for i in range(min(self.cfg.n_samples, len(b.texts))):
            n = int(b.response_mask[i].sum())
            ids = b.response_ids[i, :n].tolist()
            rows.append({
                "prompt": b.prompts[i], "response": b.texts[i],
                "tokens": [self.tokenizer.decode([x]) for x in ids],
                "rm_rewards": [round(float(x), 4) for x in b.rm_rewards[i, :n]],
                "kl": [round(float(x), 4) for x in b.kl[i, :n]],
            })
        atomic_write_json(self.run_dir / "samples" / f"step-{self.step:06d}.json", rows)

    # ---------------------------------------------------------------- checkpoints
    def _latest_checkpoint(self) -> Path | None:
        if not self.ckpt_dir.is_dir():
            return None
        done = sorted(p for p in self.ckpt_dir.glob("step-*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Atomic: written to a temp folder, renamed into place; older ones pruned afterwards.

        Weights go to safetensors (``save_model`` handles tied embeddings and LoRA wrappers
        alike); optimizer/scheduler/RNG state to ``optim.pt``, our own file, read back with
        ``weights_only=True``.
        """
        from safetensors.torch import save_model

        path = self.ckpt_dir / f"step-{self.step:06d}"
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            with atomic_dir(path) as tmp:
                save_model(self.acc.unwrap_model(self.actor), str(tmp / "actor.safetensors"))
                save_model(self.acc.unwrap_model(self.critic), str(tmp / "critic.safetensors"))
                torch.save({
                    "opt_a": self.opt_a.state_dict(), "opt_c": self.opt_c.state_dict(),
                    "sch_a": self.sch_a.state_dict(), "sch_c": self.sch_c.state_dict(),
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                }, tmp / "optim.pt")
                atomic_write_json(tmp / "state.json", {
                    "step": self.step, "kl_ctl": self.kl_ctl.state_dict(),
                    "reward_stats": self.reward_stats.state_dict(), "config": to_dict(self.cfg),
                })
            older = sorted(p for p in self.ckpt_dir.glob("step-*") if p.name < path.name)
            for old in older[: max(len(older) - (self.cfg.keep_checkpoints - 1), 0)]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint: %s", path)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self) -> None:
        from safetensors.torch import load_model

        path = self._latest_checkpoint()
        if path is None:
            log.warning("resume=true but %s has no checkpoint: starting from step 0", self.ckpt_dir)
            return
        state = json.loads((path / "state.json").read_text())
        load_model(self.acc.unwrap_model(self.actor), str(path / "actor.safetensors"), device=str(self.device))
        load_model(self.acc.unwrap_model(self.critic), str(path / "critic.safetensors"), device=str(self.device))
        opt = torch.load(path / "optim.pt", weights_only=True)
        self.opt_a.load_state_dict(opt["opt_a"])
        self.opt_c.load_state_dict(opt["opt_c"])
        self.sch_a.load_state_dict(opt["sch_a"])
        self.sch_c.load_state_dict(opt["sch_c"])
        torch.set_rng_state(opt["torch_rng"])
        random.setstate(_tuplify(opt["python_rng"]))
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.step = int(state["step"])
        log.info("resumed from %s (step %d)", path, self.step)

    def save_policy(self) -> Path:
        from ..models.lora import merge_lora

        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            model = self.acc.unwrap_model(self.actor)
            if self.cfg.actor_lora.enabled:
                import copy

                model = merge_lora(copy.deepcopy(model))
            with atomic_dir(self.out) as tmp:
                model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                atomic_write_json(tmp / POLICY_META, {
                    "template": to_dict(self.template), "stage": "ppo", "rm": self.cfg.rm,
                    "rm_kind": self.rm.kind, "steps": self.step, "run": str(self.run_dir),
                })
            log.info("wrote the PPO policy to %s (metrics, samples and checkpoints in %s)", self.out, self.run_dir)
        self.acc.wait_for_everyone()
        return self.out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _mix(*xs: int) -> int:
    """A deterministic 31-bit seed from several integers (seed, step, rank)."""
    h = 1469598103934665603
    for x in xs:
        h = ((h ^ (int(x) & 0xFFFFFFFF)) * 1099511628211) % (1 << 61)
    return h % (1 << 31)


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _check_same_tokenizer(policy_tok, rm_tok, policy: str, rm: str) -> None:
    """The RM scores the policy's token ids directly, so both must share one vocabulary."""
    if policy_tok.get_vocab() != rm_tok.get_vocab() or policy_tok.eos_token_id != rm_tok.eos_token_id:
        raise ConfigError(
            f"the reward model's tokenizer ({rm}) differs from the policy's ({policy}); token rewards are "
            "aligned to the policy's token ids, so train the RM from the SFT policy (same tokenizer)"
        )


class _MetricsLogger:
    """metrics.jsonl (truncated to the resumed step, so a resumed run has no duplicate rows) + TensorBoard."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        if self.path.is_file():
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **{k: (None if not math.isfinite(v) else v) for k, v in metrics.items()}}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="PPO", unit="step", dynamic_ncols=True)


def run_ppo(cfg: PPOConfig) -> Path:
    return PPOTrainer(cfg).train()


