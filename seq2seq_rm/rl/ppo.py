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
(each takes its own share of every prompt batch; gradients are averaged by DDP, or by
DeepSpeed ZeRO with one engine per trained model: rl/zero.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import (
    DTYPE_HELP,
    Dtype,
    ExtractionConfig,
    LoraOptions,
    Options,
    TemplateConfig,
    check_precision,
    opt,
    to_dict,
)
from ..errors import ConfigError, Seq2SeqRMError
from ..io import atomic_dir, atomic_write_json, clean_stale, is_terminal
from ..layout import concat, response_logits, response_slice
from ..outputs import META_FILES, check_output_dir, read_policy_template
from ..rewards.policy import check_same_tokenizer, policy_token_rewards
from . import losses as L
from . import zero
from .rollout import SamplingConfig, VLLMOptions, check_vllm_options, step_seed

log = logging.getLogger(__name__)

POLICY_META = META_FILES["ppo-policy"]


@dataclass
class PPOConfig(Options):
    policy: str = opt("", "SFT policy folder (also the frozen reference)")
    rm: str = opt("", "reward model folder (seq2seq or scalar), from `seq2seq-rm rm train`")
    prompts: str = opt("", "JSONL/JSON/Parquet/datasets prompts with a `prompt` field (string or chat messages)")
    split: str | None = opt(None, "split of a datasets folder, hub dataset or JSON object of prompts (default: train)")
    subset: str | None = opt(None, "hub dataset subset / configuration name of the prompts")
    out: str = opt("", "final policy folder; checkpoints, metrics and samples go to OUT.run/ beside it")
    overwrite: bool = opt(False, "start afresh: replace an earlier run's OUT.run/ and final policy")
    resume: bool = opt(False, "continue from the latest checkpoint in OUT.run/checkpoints")
    critic_init: Literal["policy", "rm"] = opt("policy", "initialise the critic from the policy or from the rm")
    steps: int = opt(20, "PPO iterations (each: one rollout batch, then ppo_epochs of updates)", ge=1)
    batch_size: int = opt(16, "prompts per rollout batch, per process", ge=1)
    mini_batch_size: int = opt(8, "sequences per optimiser step, per process", ge=1)
    grad_accum: int = opt(1, "micro-batches per minibatch (gradient accumulation)", ge=1)
    ppo_epochs: int = opt(2, "passes over each rollout batch", ge=1)
    actor_lr: float = opt(1e-5, "actor learning rate", gt=0)
    critic_lr: float = opt(5e-6, "critic learning rate", gt=0)
    warmup_steps: int = opt(0, "linear learning-rate warm-up, in optimiser steps", ge=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm", gt=0)
    kl_coef: float = opt(0.02, "beta: weight of the per-token KL penalty in the reward", ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator in the reward")
    adaptive_kl: bool = opt(False, "adapt beta towards kl_target (Ziegler et al. 2019)")
    kl_target: float = opt(6.0, "adaptive KL: target KL per sequence", gt=0)
    kl_horizon: int = opt(10000, "adaptive KL: horizon in sequences", ge=1)
    gamma: float = opt(1.0, "discount", ge=0, le=1)
    lam: float = opt(0.95, "GAE lambda", ge=0, le=1)
    clip_ratio: float = opt(0.2, "PPO ratio clip", gt=0)
    value_clip: float | None = opt(5.0, "value clip in reward units (null: off)", gt=0)
    reward_clip: float | None = opt(50.0, "clip RM token rewards to [-c, c] (null: off)", gt=0)
    score_unfinished: Literal["append_eos", "as_is"] = opt(
        "append_eos", "a response cut at max_new_tokens is scored as if it stopped there (append_eos: the RM also "
        "scores the missing EOS, its reward going to the last real token) or as the cut tokens alone (as_is)")
    missing_eos_penalty: float | None = opt(
        None, "subtract this from the reward of every response cut at max_new_tokens, on its last token (TRL's "
        "option); null: no penalty", ge=0)
    normalize_rewards: bool = opt(False, "scale RM rewards by a running std of sequence rewards (over all processes)")
    whiten_advantages: bool = opt(True, "whiten advantages over the batch")
    vf_coef: float = opt(1.0, "weight of the value loss (separate optimiser; scales its gradient)", gt=0)
    max_prompt_length: int = opt(256, "prompts longer than this (in tokens) are skipped and counted", ge=1)
    sampling: SamplingConfig = opt(SamplingConfig(), "rollout sampling")
    engine: Literal["hf", "vllm"] = opt(
        "hf", "rollout engine: hf (transformers generate on the actor itself) | vllm (vLLM, given the actor's "
        "weights before every rollout; one engine per training process)")
    vllm: VLLMOptions = opt(VLLMOptions(), "vLLM engine options (engine=vllm)")
    bf16: bool = opt(False, "bf16 mixed precision: bf16 autocast of the forward passes over the stored weights "
                            "(their dtype is `dtype`)")
    dtype: Dtype = opt("float32", DTYPE_HELP + "; PPO: actor, critic backbone, reference and reward model")
    gradient_checkpointing: bool = opt(
        False, "recompute the actor's and critic's activations in the backward pass instead of storing them "
               "(less memory, slower); non-reentrant torch checkpointing")
    actor_lora: LoraOptions = opt(LoraOptions(), "LoRA for the actor (merged into the saved policy)")
    critic_lora: LoraOptions = opt(LoraOptions(), "LoRA for the critic backbone")
    seed: int = opt(0, "seed for prompt order, sampling and minibatch order", ge=0)
    save_every: int = opt(10, "checkpoint every N steps (0: only at the end / on Ctrl-C)", ge=0)
    keep_checkpoints: int = opt(2, "checkpoints kept on disk", ge=1)
    sample_every: int = opt(5, "save sample responses with their token rewards every N steps (0: never)", ge=0)
    n_samples: int = opt(4, "responses saved per sample dump", ge=1)
    trust_remote_code: bool = opt(False, "allow custom model code")
    template: TemplateConfig | None = opt(None, "prompt layout; default: the policy folder's policy.json/sft.json")
    rm_server: str | None = opt(
        None, "score with a vLLM server (http://HOST:PORT/v1) that serves the --rm folder (seq2seq RMs), instead of "
        "loading its weights here: token rewards from the server's prompt log-probs (README, 'The seq2seq RM served "
        "by vLLM')")
    rm_server_key_env: str | None = opt(None, "environment variable holding rm_server's API key")
    extraction: ExtractionConfig | None = opt(
        None, "token-reward options for a seq2seq RM instead of those stored in its folder (recorded in the run)")

    def check(self) -> None:
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size "
                              f"({self.mini_batch_size})")
        if self.mini_batch_size % self.grad_accum:
            raise ConfigError(f"mini_batch_size ({self.mini_batch_size}) must be a multiple of grad_accum "
                              f"({self.grad_accum})")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite contradict each other: resume continues the run in OUT.run/, "
                              "overwrite replaces it")
        launch = zero.launch_config()  # inside `accelerate launch` with DeepSpeed: checked now, before any loading
        if launch is not None:
            if not zero.installed():
                raise ConfigError(zero.DEEPSPEED_MISSING)
            zero.check_launch_config(launch[0], f"{launch[1]} (DeepSpeed config of this launch)", self.dtype,
                                     zero.zero3_init_flag())
        check_precision(self.dtype, self._full_training(), self.bf16, fp16_training_supported=False,
                        master_weights=launch is not None and zero.master_weights(launch[0], self.dtype))
        if self.engine == "vllm":
            check_vllm_options(self.vllm)

    def _full_training(self) -> dict[str, bool]:
        """The trained models, and whether each trains all of its weights (no LoRA)."""
        return {"the actor": not self.actor_lora.enabled, "the critic": not self.critic_lora.enabled}


# Options a resumed run may change: bookkeeping, read afresh at every step.
RESUME_FREE = ("steps", "save_every", "keep_checkpoints", "sample_every", "n_samples", "resume", "overwrite",
               "rm_server", "rm_server_key_env")
# Options a resumed run may change because they are applied to the restored state (and logged).
RESUME_APPLIED = ("actor_lr", "critic_lr", "max_grad_norm")
# A trained parameter larger than this multiple of the largest initial parameter: the update diverged.
DIVERGED_GROWTH = 1000.0


# --------------------------------------------------------------------------------------
# Forward passes: [left-padded prompt | right-padded response], one slice for the batch
# --------------------------------------------------------------------------------------


def policy_logits(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=1.0) -> torch.Tensor:
    """(B, T, V) float logits; ``[:, t]`` is the distribution of response token t (state s_t).

    Divided by the sampling temperature, so the log-probs are those of the policy that
    actually sampled the responses (otherwise the PPO ratio is off from step one).
    """
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask).float()
    return logits / temperature if temperature != 1.0 else logits


def critic_values(critic, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """(B, T) values V(s_t): read at the position just before response token t."""
    input_ids, attention, pos = concat(prompt_ids, prompt_mask, response_ids, response_mask)
    values = critic(input_ids=input_ids, attention_mask=attention, position_ids=pos)
    return response_slice(values, prompt_ids.shape[1], response_ids.shape[1])


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
    engine_logp: torch.Tensor | None = None

    def select(self, idx: torch.Tensor) -> Batch:
        def pick(x):
            return x[idx] if isinstance(x, torch.Tensor) else x

        return Batch(**{k: pick(v) for k, v in self.__dict__.items() if k not in ("prompts", "texts")},
                     prompts=[self.prompts[i] for i in idx.tolist()], texts=[self.texts[i] for i in idx.tolist()])


def _stop(why: str, step: int, ckpt: Path | None) -> Seq2SeqRMError:
    """The error that stops a run at ``step`` (1-based, as in metrics.jsonl and checkpoint names)."""
    where = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
    return Seq2SeqRMError(f"step {step}: {why}; stopping ({where})")


def _check_finite(name: str, x: torch.Tensor, step: int, ckpt: Path | None) -> None:
    if not torch.isfinite(x).all():
        raise _stop(f"non-finite {name} (NaN or inf)", step, ckpt)


class PPOTrainer:
    """Actor, critic, frozen reference and reward model, and the loop that trains them."""

    def __init__(self, cfg: PPOConfig, accelerator=None, reward_model=None, rollout_metrics=None):
        """``reward_model``: any object with the ``RewardModel`` interface, used instead of loading
        ``cfg.rm`` (custom rewards, tests). It must score the policy's token ids.
        ``rollout_metrics``: ``f(prompts, responses) -> {name: float}``, extra metrics of every
        step's rollouts logged with the others (averaged over processes), e.g. a gold oracle's
        score, which is how the experiment draws over-optimisation curves."""
        from accelerate import Accelerator

        self.cfg = cfg
        self.rollout_metrics = rollout_metrics
        self.acc = accelerator or Accelerator(**zero.accelerator_kwargs())
        # DeepSpeed ZeRO: actor and critic get one engine each (rl/zero.py); otherwise accelerate's DDP.
        self.ds = self.acc.distributed_type.name == "DEEPSPEED"
        if self.ds and not zero.installed():
            raise ConfigError(zero.DEEPSPEED_MISSING)
        self.device = self.acc.device
        self.out = Path(cfg.out)
        self.run_dir = self.out.parent / (self.out.name + ".run")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self._stop = False
        self._check_paths(reward_model is None)
        # under ZeRO-3 every model loads whole (the reference and the RM stay so; actor and critic are
        # partitioned when their engines are built)
        with zero.unpartitioned_loading(self.acc.state.deepspeed_plugin) if self.ds else nullcontext():
            self._load_models(reward_model)
        self._build_optimizers()
        self._load_prompts()

    # ---------------------------------------------------------------- set-up
    def _check_paths(self, need_rm: bool) -> None:
        """Before any work: required inputs, and outputs that would not destroy anything."""
        cfg = self.cfg
        for name in ("policy", "prompts", "out") + (("rm",) if need_rm else ()):
            if not getattr(cfg, name):
                raise ConfigError(f"--{name} is required")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir} (the run folder of --out {self.out}) is a file; give another --out")
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()) and not (cfg.resume or cfg.overwrite):
            raise ConfigError(
                f"{self.run_dir} holds an earlier run (checkpoints, metrics); pass --resume to continue it, "
                "--overwrite to start afresh and replace it, or give another --out")
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()) and cfg.overwrite and \
                not (self.run_dir / "config.json").is_file():
            raise ConfigError(f"{self.run_dir} is not a seq2seq-rm PPO run folder (no config.json); "
                              "not replacing it: give another --out")
        check_output_dir(self.out, "ppo-policy", cfg.overwrite or cfg.resume, inputs=[cfg.policy, cfg.rm, cfg.prompts])
        clean_stale(self.ckpt_dir)

    def _load_models(self, reward_model) -> None:
        """Tokenizer, template, reward model (with the run's extraction options), actor,
        frozen reference and critic, all stored in ``cfg.dtype`` (``auto``: the policy's own).

        Under actor LoRA there is no reference model: the reference log-probs come from the actor's
        own base with its adapters disabled (:meth:`reference_policy`)."""
        from ..models.loading import dtype_name, load_causal_lm, load_tokenizer, resolve_dtype
        from ..models.lora import apply_lora
        from ..models.value import ValueModel
        from ..rewards import load_reward_model

        cfg = self.cfg
        # One dtype for every role (recorded in policy.json); `auto` is the policy checkpoint's own.
        self.dtype = dtype_name(resolve_dtype(cfg.dtype, cfg.policy, trust_remote_code=cfg.trust_remote_code))
        if cfg.dtype == "auto":
            check_precision(self.dtype, cfg._full_training(), cfg.bf16, fp16_training_supported=False,
                            where=f"dtype=auto resolved to {self.dtype} (the policy checkpoint's own dtype)",
                            master_weights=self.ds and zero.master_weights(self._ds_plugin_config(), self.dtype))
        if self.ds:
            zero.check_launch_config(self._ds_plugin_config(), "the DeepSpeed config of this launch", self.dtype,
                                     zero3_init=zero.zero3_init_flag())
        self.tokenizer = load_tokenizer(cfg.policy, trust_remote_code=cfg.trust_remote_code)
        self.template = cfg.template or read_policy_template(cfg.policy) or TemplateConfig()
        self.rm = reward_model or load_reward_model(cfg.rm, device=self.device, trust_remote_code=cfg.trust_remote_code,
                                                    dtype=self.dtype, server=cfg.rm_server,
                                                    server_key_env=cfg.rm_server_key_env)
        check_same_tokenizer(self.tokenizer, self.rm.tokenizer, cfg.policy, cfg.rm)
        if cfg.extraction is not None:
            if self.rm.kind != "seq2seq":
                raise ConfigError(f"extraction options apply to a seq2seq RM; {cfg.rm or 'the RM'} is a "
                                  f"{self.rm.kind} RM")
            self.rm.extraction = cfg.extraction

        torch.manual_seed(cfg.seed)  # value head and LoRA init
        actor = load_causal_lm(cfg.policy, trust_remote_code=cfg.trust_remote_code, dtype=self.dtype)
        self.ref = None  # under actor LoRA: the actor's base with the adapters off (reference_policy)
        if not cfg.actor_lora.enabled:
            self.ref = load_causal_lm(cfg.policy, trust_remote_code=cfg.trust_remote_code,
                                      dtype=self.dtype).to(self.device).eval()
            self.ref.requires_grad_(False)
        if cfg.critic_init == "rm":
            check_same_tokenizer(self.tokenizer, load_tokenizer(cfg.rm), cfg.policy, cfg.rm)
        critic = ValueModel.from_folder(cfg.policy if cfg.critic_init == "policy" else cfg.rm, cfg.trust_remote_code,
                                        dtype=self.dtype)
        if cfg.actor_lora.enabled:
            lo = cfg.actor_lora
            actor = apply_lora(actor, lo.r, lo.alpha, lo.dropout, lo.target_modules)
        if cfg.critic_lora.enabled:
            lo = cfg.critic_lora
            critic.backbone = apply_lora(critic.backbone, lo.r, lo.alpha, lo.dropout, lo.target_modules,
                                         task_type="FEATURE_EXTRACTION")
        if cfg.gradient_checkpointing:
            for model in (actor, critic.backbone):
                enable_checkpointing(model)
        self._actor, self._critic = actor, critic
        # The scale against which a diverged update is recognised (see _check_update).
        self._scale = {name: zero.largest_abs(m.parameters()) for name, m in (("actor", actor), ("critic", critic))}

    def _build_optimizers(self) -> None:
        """AdamW and a linear warm-up for actor and critic, prepared by accelerate; the rollout engine."""
        from .rollout import make_engine

        cfg = self.cfg

        def warmup(i):
            return min(1.0, (i + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0

        opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
                for m, lr in ((self._actor, cfg.actor_lr), (self._critic, cfg.critic_lr))]
        self.sch_a, self.sch_c = (torch.optim.lr_scheduler.LambdaLR(o, warmup) for o in opts)
        if self.ds:
            # One engine per trained model; the schedulers keep driving the AdamW param groups
            # that DeepSpeed's ZeRO optimizer wraps (it keeps the same group dicts).
            engines = []
            for name, model, o in (("actor", self._actor, opts[0]), ("critic", self._critic, opts[1])):
                conf = zero.engine_config(
                    self._ds_plugin_config(), micro_batch=cfg.mini_batch_size // cfg.grad_accum,
                    grad_accum=cfg.grad_accum, world=self.acc.num_processes, max_grad_norm=cfg.max_grad_norm, dtype=self.dtype,
                    hidden_size=getattr(getattr(model, "config", None), "hidden_size", None),
                    where=f"the DeepSpeed config of this launch ({name} engine)")
                engines.append(zero.build_engine(model, o, conf))
            self.actor, self.critic = engines
            self.opt_a, self.opt_c = opts
            self.zero_stage = zero.zero_stage(conf)
            log.info("DeepSpeed ZeRO-%d: one engine each for actor and critic; reference and reward model are "
                     "plain copies on every process", self.zero_stage)
        else:
            self.actor, self.critic, self.opt_a, self.opt_c = self.acc.prepare(self._actor, self._critic, *opts)
            self.zero_stage = None
        del self._actor, self._critic
        self.engine = make_engine(cfg.engine, self.acc.unwrap_model(self.actor), self.tokenizer, self.template,
                                  vllm=self._vllm_options(), seed=cfg.seed, trust_remote_code=cfg.trust_remote_code)
        self.kl_ctl = (
            L.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
            if cfg.adaptive_kl else L.FixedKLController(cfg.kl_coef)
        )
        self.reward_stats = L.RunningMoments()

    def _ds_plugin_config(self) -> dict:
        """The DeepSpeed config accelerate built for this launch (its plugin's), not modified."""
        return self.acc.state.deepspeed_plugin.deepspeed_config

    def _vllm_options(self) -> VLLMOptions:
        """``cfg.vllm``, with the window defaulting to what PPO can use: the longest kept prompt
        plus the longest response (prompts over ``max_prompt_length`` are skipped), capped by the
        model's window. A small window keeps vLLM's KV cache small."""
        from dataclasses import replace

        from .rollout import model_window

        o = self.cfg.vllm
        if o.max_model_len is not None:
            return o
        need = self.cfg.max_prompt_length + self.cfg.sampling.max_new_tokens
        window = model_window(self.acc.unwrap_model(self.actor))
        return replace(o, max_model_len=min(need, window) if window else need)

    def _load_prompts(self) -> None:
        """The prompts, without empty ones and those longer than ``max_prompt_length`` (counted)."""
        from ..data.loading import load_prompts
        from ..data.templates import encode_text, render_prompt, resolve_style

        cfg = self.cfg
        records, report = load_prompts(cfg.prompts, split=cfg.split, subset=cfg.subset)
        style = resolve_style(self.template, self.tokenizer)
        self.prompts = [r.prompt for r in records
                        if len(encode_text(render_prompt(r.prompt, self.template, self.tokenizer, style),
                                           self.tokenizer, style)) <= cfg.max_prompt_length]
        n_long = len(records) - len(self.prompts)
        if n_long:
            report.skipped[f"longer than max_prompt_length={cfg.max_prompt_length} tokens"] = n_long
            report.kept -= n_long
        if not self.prompts:
            raise Seq2SeqRMError(f"{cfg.prompts}: no usable prompts ({report.summary()})")
        self.prompt_report = report

    # ---------------------------------------------------------------- data
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
        """Responses of the current actor. An engine with its own copy of the weights (vLLM)
        gets the actor's current weights first, every step: after each update, and after a
        resume, so no rollout comes from stale weights (a no-op for the HF engine)."""
        prompts = self.prompts_for_step(step)
        sampling = SamplingConfig(**{**to_dict(self.cfg.sampling),
                                     "seed": step_seed(self.cfg.seed, step, self.acc.process_index)})
        self.actor.eval()
        self.engine.wake_up()
        actor = self.acc.unwrap_model(self.actor)
        # ZeRO-3: the full weights exist only inside this (collective) gather; the HF engine needs
        # none (it generates through DeepSpeed's own per-layer gathers).
        with zero.gathered(actor) if self.cfg.engine != "hf" else nullcontext():
            self.engine.update_weights(actor)
        r = self.engine.generate(prompts, sampling)
        self.engine.sleep()  # vllm.enable_sleep_mode: free its memory while PPO trains
        return Batch(prompts=prompts, prompt_ids=r.prompt_ids.to(self.device), prompt_mask=r.prompt_mask.to(self.device),
                     response_ids=r.response_ids.to(self.device), response_mask=r.response_mask.to(self.device),
                     texts=r.texts, finished=r.finished,
                     engine_logp=None if r.logprobs is None else r.logprobs.to(self.device))

    @torch.no_grad()
    def rewards(self, b: Batch) -> None:
        """RM token rewards (B, T); a response cut at ``max_new_tokens`` is scored as
        ``score_unfinished`` says and penalised by ``missing_eos_penalty``."""
        cfg = self.cfg
        b.rm_rewards = policy_token_rewards(
            self.rm, b.prompts, b.response_ids, b.response_mask, b.finished, score_unfinished=cfg.score_unfinished,
            missing_eos_penalty=cfg.missing_eos_penalty, eos_token_id=self.tokenizer.eos_token_id, device=self.device)
        _check_finite("reward", b.rm_rewards, self.step + 1, self._latest_checkpoint())

    @torch.no_grad()
    def shape(self, b: Batch) -> None:
        cfg = self.cfg
        args = (b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        with self._autocast():
            logits = policy_logits(self.actor, *args, temperature=self._temperature)
            b.logp = L.logprobs_from_logits(logits, b.response_ids)
            b.entropy = L.entropy_from_logits(logits)
            del logits
            with self.reference_policy() as ref:
                ref_logits = policy_logits(ref, *args, temperature=self._temperature)
            b.ref_logp = L.logprobs_from_logits(ref_logits, b.response_ids)
            b.values = critic_values(self.critic, *args).float()
        mask = b.response_mask
        r = b.rm_rewards
        if cfg.normalize_rewards:  # every process updates the same statistics with everyone's rewards
            self.reward_stats.update(self.acc.gather(r.sum(-1)))
            r = r / max(self.reward_stats.std, 1e-6)
        b.shaped, b.kl = L.shape_rewards(r, b.logp, b.ref_logp, mask, self.kl_ctl.value, cfg.kl_estimator,
                                         cfg.reward_clip)
        b.advantages, b.returns = L.gae(b.shaped, b.values * mask, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            b.advantages = L.masked_whiten(b.advantages, mask, all_reduce=self._sum_over_processes)

    @contextlib.contextmanager
    def reference_policy(self):
        """The frozen reference policy (the SFT policy), for no-grad forward passes.

        Under actor LoRA it is the actor's own base with the adapters switched off (peft's
        ``disable_adapter``): LoRA never changes the base weights, so they are exactly the SFT
        policy, and no second copy of the model is held. Otherwise it is ``self.ref``.
        """
        if self.ref is not None:
            yield self.ref
            return
        actor = self.acc.unwrap_model(self.actor)
        with actor.disable_adapter():
            yield actor

    @property
    def _sum_over_processes(self):
        """A function summing a tensor over all processes (None with one process)."""
        if self.acc.num_processes == 1:
            return None
        return lambda x: self.acc.reduce(x.to(self.device), reduction="sum")

    def update(self, b: Batch) -> dict:
        """``ppo_epochs`` passes over the batch in minibatches of ``mini_batch_size``, each split into
        ``grad_accum`` micro-batches. Every token of a minibatch weighs the same in its update,
        whatever the split: each micro-batch divides its summed loss by the valid tokens of the
        whole minibatch over all processes (times the process count, as DDP averages gradients)."""
        cfg = self.cfg
        self.actor.train()
        self.critic.train()
        stats: dict[str, list[float]] = {}
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.step, "minibatches"))
        micro = cfg.mini_batch_size // cfg.grad_accum
        world = self.acc.num_processes
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(len(b.prompts), generator=gen)
            for start in range(0, len(perm), cfg.mini_batch_size):
                if not self.ds:  # a DeepSpeed engine zeroes its gradients in step()
                    self.opt_a.zero_grad(set_to_none=True)
                    self.opt_c.zero_grad(set_to_none=True)
                rows = perm[start : start + cfg.mini_batch_size].to(b.response_ids.device)
                n_tokens = b.response_mask[rows].sum().float().reshape(1)
                if world > 1:
                    n_tokens = self.acc.reduce(n_tokens.to(self.device), reduction="sum")
                token_count = n_tokens[0].clamp(min=1) / world
                for m0 in range(0, len(rows), micro):
                    mb = b.select(rows[m0 : m0 + micro])
                    args = (mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
                    with self._autocast():
                        logits = policy_logits(self.actor, *args, temperature=self._temperature)
                        logp = L.logprobs_from_logits(logits, mb.response_ids)
                        values = critic_values(self.critic, *args)
                    pl, ps = L.policy_loss(logp, mb.logp, mb.advantages, mb.response_mask, cfg.clip_ratio,
                                           token_count=token_count)
                    vl, vs = L.value_loss(values.float(), mb.values, mb.returns, mb.response_mask, cfg.value_clip,
                                          token_count=token_count)
                    _check_finite("loss", pl.detach() + vl.detach(), self.step + 1, self._latest_checkpoint())
                    if self.ds:
                        # DeepSpeed counts the micro-batches itself (gradient_accumulation_steps =
                        # grad_accum): step() is a no-op until the last one of the minibatch, which
                        # reduces, clips and applies. The loss is already normalised over the whole
                        # minibatch, so DeepSpeed must not divide it again (scale_wrt_gas=False).
                        last = m0 + micro >= len(rows)
                        for engine, loss in ((self.actor, pl), (self.critic, cfg.vf_coef * vl)):
                            if engine.is_gradient_accumulation_boundary() != last:
                                raise RuntimeError("DeepSpeed's micro-batch count is out of step with the minibatches")
                            engine.backward(loss, scale_wrt_gas=False)
                            engine.step()
                    else:
                        self.acc.backward(pl)
                        self.acc.backward(cfg.vf_coef * vl)
                    for k, v in {"policy_loss": pl.item(), "value_loss": vl.item(), **ps,
                                 **{f"value_{k}": v for k, v in vs.items()}}.items():
                        stats.setdefault(k, []).append(float(v))
                if self.ds:
                    # the last engine.step clipped (gradient_clipping = max_grad_norm), applied and zeroed
                    # in one call, so a non-finite gradient is seen after it was applied: _check_update
                    # stops the run on the resulting weights, before any checkpoint can save them.
                    norms = torch.tensor([float(e.get_global_grad_norm() or 0.0) for e in (self.actor, self.critic)])
                    _check_finite("gradient norm", norms, self.step + 1, self._latest_checkpoint())
                else:
                    norms = torch.stack([torch.as_tensor(self.acc.clip_grad_norm_(m.parameters(), cfg.max_grad_norm),
                                                         dtype=torch.float32).to(self.device)
                                         for m in (self.actor, self.critic)])
                    # A non-finite gradient would turn every weight into NaN: stop before applying it.
                    _check_finite("gradient norm", norms, self.step + 1, self._latest_checkpoint())
                    self.opt_a.step()
                    self.opt_c.step()
                stats.setdefault("grad_norm_actor", []).append(float(norms[0]))
                stats.setdefault("grad_norm_critic", []).append(float(norms[1]))
                self.sch_a.step()
                self.sch_c.step()
        self._check_update()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def _check_update(self) -> None:
        """Stop when the weights just updated are unusable, before anything can save them: a
        non-finite parameter, or one over ``DIVERGED_GROWTH`` times the largest initial
        parameter (an exploding step, e.g. a far too large learning rate, gives finite but
        meaningless weights whose outputs can still look finite)."""
        reduce_max = (lambda x: self.acc.reduce(x.to(self.device), reduction="max")) if self.zero_stage == 3 else None
        for name, model in (("actor", self.actor), ("critic", self.critic)):
            largest = zero.largest_abs((p for p in model.parameters() if p.requires_grad), reduce_max)
            if not math.isfinite(largest):
                raise _stop(f"the {name} update produced non-finite weights (NaN or inf)", self.step + 1,
                            self._latest_checkpoint())
            limit = DIVERGED_GROWTH * max(self._scale[name], 1e-3)
            if largest > limit:
                raise _stop(
                    f"the {name} update diverged: a weight reached {largest:.3g}, over {DIVERGED_GROWTH:g} times the "
                    f"largest initial weight ({self._scale[name]:.3g}); lower actor_lr/critic_lr or max_grad_norm",
                    self.step + 1, self._latest_checkpoint())

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
        if cfg.resume:
            self.load_checkpoint()
        elif cfg.overwrite and self.acc.is_main_process and self.run_dir.is_dir():
            shutil.rmtree(self.run_dir)  # checked in _check_paths: an earlier run of ours
            log.info("removed the earlier run in %s (overwrite=true)", self.run_dir)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / "config.json", to_dict(cfg))  # the options in force
        logger = _MetricsLogger(self.run_dir, self.step, enabled=self.acc.is_main_process)
        log.info("PPO: %d prompts (%s), %d steps from step %d, %d process(es), RM kind %s",
                 len(self.prompts), self.prompt_report.summary(), cfg.steps, self.step, self.acc.num_processes,
                 self.rm.kind)
        previous = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        bar = _Progress(cfg.steps, self.step, enabled=self.acc.is_main_process)
        try:
            while self.step < cfg.steps and not self._stop:
                t: dict[str, float] = {}
                with _timed(t, "generate"):
                    b = self.rollout(self.step)
                with _timed(t, "reward"):
                    self.rewards(b)
                with _timed(t, "forward"):
                    self.shape(b)
                with _timed(t, "train"):
                    train_stats = self.update(b)
                metrics = self._metrics(b, train_stats, t)
                self.kl_ctl.update(metrics["kl"], cfg.batch_size * self.acc.num_processes)
                self.step += 1
                logger.log(self.step, metrics)
                bar.update(reward=f"{metrics['rm_reward']:+.2f}", kl=f"{metrics['kl']:.3f}",
                           len=f"{metrics['response_length']:.1f}", gen=f"{t['generate']:.1f}s",
                           train=f"{t['train']:.1f}s")
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._dump_samples(b)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
            self.save_checkpoint()
            if self._stop and self.step < cfg.steps:
                log.warning("interrupted: checkpoint saved at step %d; rerun with --resume to continue", self.step)
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
        if b.engine_logp is not None:
            # The on-policy check of an engine with its own weights: how far its log-probs of the
            # sampled tokens are from the actor's (~1e-6 in fp32; more under bf16 or with top_k/top_p,
            # which the engine's sampling distribution includes and the actor's log-probs do not).
            known = b.response_mask & torch.isfinite(b.engine_logp)  # NaN: a stop id vLLM did not return
            local["engine_logp_gap"] = L.masked_mean(torch.where(known, (b.engine_logp - b.logp).abs(), 0.0), known)
        if self.rollout_metrics is not None:
            local.update({k: torch.tensor(float(v)) for k, v in self.rollout_metrics(b.prompts, b.texts).items()})
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
        ``weights_only=True``. Only weights that passed ``_check_update`` get here.
        """
        from safetensors.torch import save_file, save_model

        path = self.ckpt_dir / f"step-{self.step:06d}"
        self.acc.wait_for_everyone()
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_dir(path, replace=True)) if self.acc.is_main_process else None
            if self.ds:
                # Every process writes its own ZeRO shards (optimizer states, and under ZeRO-3 the
                # weights) into rank 0's temporary folder (a file system all processes share), then
                # the folder is published by one rename as usual.
                from accelerate.utils import broadcast_object_list

                tmp = Path(broadcast_object_list([str(tmp) if tmp else None], from_process=0)[0])
                for name, engine in (("actor", self.actor), ("critic", self.critic)):
                    engine.save_checkpoint(str(tmp / "deepspeed"), tag=name, save_latest=False)
            actor, critic = self.acc.unwrap_model(self.actor), self.acc.unwrap_model(self.critic)
            with zero.gathered(actor, critic):
                if self.acc.is_main_process:
                    for name, model in (("actor", actor), ("critic", critic)):
                        if self.ds:  # ZeRO keeps weights as views of flat buffers, which save_model refuses
                            save_file(zero.full_state_dict(model), str(tmp / f"{name}.safetensors"))
                        else:
                            save_model(model, str(tmp / f"{name}.safetensors"))
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                torch.save({
                    # under DeepSpeed the optimizer states are in deepspeed/ (one shard per process)
                    **({} if self.ds else {"opt_a": self.opt_a.state_dict(), "opt_c": self.opt_c.state_dict()}),
                    "sch_a": self.sch_a.state_dict(), "sch_c": self.sch_c.state_dict(),
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                }, tmp / "optim.pt")
                atomic_write_json(tmp / "state.json", {
                    "step": self.step, "kl_ctl": self.kl_ctl.state_dict(),
                    "reward_stats": self.reward_stats.state_dict(), "config": to_dict(self.cfg),
                    "deepspeed_zero_stage": self.zero_stage,
                })
        if self.acc.is_main_process:
            older = sorted(p for p in self.ckpt_dir.glob("step-*") if p.name < path.name)
            for old in older[: max(len(older) - (self.cfg.keep_checkpoints - 1), 0)]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint: %s", path)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self) -> None:
        """Restore the latest checkpoint; options that differ from the checkpoint's are applied
        and logged (``RESUME_APPLIED``), accepted (``RESUME_FREE``) or refused (all others)."""
        from safetensors.torch import load_model

        path = self._latest_checkpoint()
        if path is None:
            log.warning("resume=true but %s has no checkpoint: starting from step 0", self.ckpt_dir)
            return
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise self._damaged(path, e) from None
        changed = self._compare_config(state.get("config") or {}, path)
        saved_stage = state.get("deepspeed_zero_stage")
        if saved_stage != self.zero_stage:
            def what(stage):
                return "DDP (no DeepSpeed)" if stage is None else f"DeepSpeed ZeRO-{stage}"
            raise ConfigError(f"checkpoint {path} was written by a {what(saved_stage)} run and this launch is "
                              f"{what(self.zero_stage)}; resume it with the launch config it was started with")
        try:
            opt = torch.load(path / "optim.pt", weights_only=True)
            if self.ds:  # weights and optimizer shards, each process its own
                for name, engine in (("actor", self.actor), ("critic", self.critic)):
                    done, _ = engine.load_checkpoint(str(path / "deepspeed"), tag=name, load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
                    if done is None:
                        raise FileNotFoundError(f"{path / 'deepspeed' / name}: no DeepSpeed checkpoint")
            else:
                device = "cpu" if self.device.type == "cpu" else str(self.device)  # safetensors refuses "cpu:0"
                load_model(self.acc.unwrap_model(self.actor), str(path / "actor.safetensors"), device=device)
                load_model(self.acc.unwrap_model(self.critic), str(path / "critic.safetensors"), device=device)
                self.opt_a.load_state_dict(opt["opt_a"])
                self.opt_c.load_state_dict(opt["opt_c"])
            self.sch_a.load_state_dict(opt["sch_a"])
            self.sch_c.load_state_dict(opt["sch_c"])
            torch.set_rng_state(opt["torch_rng"])
            random.setstate(_tuplify(opt["python_rng"]))
            self.kl_ctl.load_state_dict(state["kl_ctl"])
            self.reward_stats.load_state_dict(state["reward_stats"])
            self.step = int(state["step"])
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, the fix is the same
            raise self._damaged(path, e) from None
        for name, (old, new) in changed.items():
            if name in ("actor_lr", "critic_lr"):
                _set_lr(self.sch_a if name == "actor_lr" else self.sch_c, new)
            log.warning("resume: %s changed from %r to %r (applied from step %d)", name, old, new, self.step + 1)
        log.info("resumed from %s (step %d)", path, self.step)

    @staticmethod
    def _damaged(path: Path, e: Exception) -> Seq2SeqRMError:
        return Seq2SeqRMError(
            f"checkpoint {path} is damaged and cannot be resumed ({type(e).__name__}: {e}); move that folder "
            "away to resume from the one before it, or start afresh with --overwrite")

    def _compare_config(self, saved: dict, path: Path) -> dict:
        """``{option: (checkpoint value, current value)}`` for the options that may change on
        resume; a ConfigError listing every other difference."""
        now = to_dict(self.cfg)
        diff = {k: (saved.get(k), now[k]) for k in now if k in saved and saved[k] != now[k]}
        refused = sorted(k for k in diff if k not in RESUME_FREE + RESUME_APPLIED)
        if refused:
            listed = "; ".join(f"{k}: {diff[k][0]!r} in the checkpoint, {diff[k][1]!r} now" for k in refused)
            raise ConfigError(
                f"--resume with options that differ from checkpoint {path}: {listed}. A resumed run keeps "
                f"them (only {', '.join(RESUME_FREE[:5] + RESUME_APPLIED)} may change); restore them, or start "
                "afresh with --overwrite")
        return {k: v for k, v in diff.items() if k in RESUME_APPLIED}

    def save_policy(self) -> Path:
        self.acc.wait_for_everyone()
        actor = self.acc.unwrap_model(self.actor)
        with zero.gathered(actor):  # ZeRO-3: the full weights, on every process (collective)
            if self.acc.is_main_process:
                self._write_policy(actor)
        self.acc.wait_for_everyone()
        return self.out

    def _write_policy(self, model) -> None:
        from ..models.lora import merge_lora
        from .rollout import policy_state_dict

        save_kwargs = {}
        saved_dtype = None
        if self.zero_stage == 3:  # gathered parameters: read them out (LoRA folded in), copy nothing
            lora = self.cfg.actor_lora.enabled
            # a LoRA result is merged and saved in float32, as merge_lora does
            save_kwargs["state_dict"] = policy_state_dict(model, dtype=torch.float32 if lora else None)
            saved_dtype = str(next(iter(save_kwargs["state_dict"].values())).dtype).removeprefix("torch.")
            if lora:
                model = model.get_base_model()
        elif self.cfg.actor_lora.enabled:
            import copy

            model = merge_lora(copy.deepcopy(model))
        with atomic_dir(self.out, replace=True) as tmp:  # checked at start: ours, or allowed
            model.save_pretrained(tmp, **save_kwargs)
            if saved_dtype is not None:  # config.json says the module's dtype; the tensors are what counts
                conf = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
                conf["dtype"] = saved_dtype
                atomic_write_json(tmp / "config.json", conf)
            self.tokenizer.save_pretrained(tmp)
            extraction = getattr(self.rm, "extraction", None)
            atomic_write_json(tmp / POLICY_META, {
                "kind": "ppo-policy", "stage": "ppo", "template": to_dict(self.template), "dtype": self.dtype,
                "saved_dtype": saved_dtype or str(model.dtype).removeprefix("torch."),
                "rm": self.cfg.rm, "rm_kind": self.rm.kind,
                "extraction": to_dict(extraction) if self.rm.kind == "seq2seq" and extraction is not None else None,
                "steps": self.step, "run": str(self.run_dir),
            })
        log.info("wrote the PPO policy to %s (metrics, samples and checkpoints in %s)", self.out, self.run_dir)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing of a transformers model, a peft-wrapped one included.

    Non-reentrant ``torch.utils.checkpoint``: it needs no input that requires grad, so a frozen
    LoRA base works as is (transformers also hooks the input embeddings to require grad). Active in
    ``train()`` mode only, i.e. in the PPO update, not in rollouts or the no-grad forward passes.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.23
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # older 5.x: the same thing under its former name
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _set_lr(scheduler, lr: float) -> None:
    """Make ``lr`` the base learning rate of a restored optimizer and its LambdaLR schedule."""
    scheduler.base_lrs = [lr] * len(scheduler.optimizer.param_groups)
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


@contextlib.contextmanager
def _timed(into: dict, name: str):
    """Adds the seconds the body took to ``into[name]`` (the loop's phase timings)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - t0


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


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


class _Progress:
    """PPO's progress: a tqdm bar on a terminal; elsewhere (a pipe, a log file) a log line every
    ``total // 20`` steps, so a log holds no bar fragments."""

    LINES = 20

    def __init__(self, total: int, initial: int, enabled: bool, stream=None):
        stream = stream if stream is not None else sys.stderr
        self.total, self.step, self.enabled = total, initial, enabled
        self.every = max(1, total // self.LINES)
        self.bar = None
        if enabled and is_terminal(stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="PPO", unit="step", dynamic_ncols=True, file=stream)

    def update(self, **shown) -> None:
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**shown)
        elif self.enabled and (self.step % self.every == 0 or self.step == self.total):
            log.info("PPO step %d/%d: %s", self.step, self.total, ", ".join(f"{k} {v}" for k, v in shown.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()



def run_ppo(cfg: PPOConfig) -> Path:
    return PPOTrainer(cfg).train()


