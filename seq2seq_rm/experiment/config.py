"""The experiment's options: ``seq2seq-rm options experiment`` lists them all.

PPO options have one owner, :class:`~seq2seq_rm.rl.ppo.PPOConfig`: the experiment holds one
(``ppo``), whose defaults here suit the tiny models trained from scratch, and fills in what
differs per arm (policy, reward model, prompts, output folder, seed, extraction options).
Every arm of a seed gets the same PPO options, so the baseline is never weakened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import (
    DTYPE_HELP,
    Dtype,
    ExtractionConfig,
    Options,
    TrainOptions,
    check_precision,
    from_dict,
    opt,
    to_dict,
)
from ..errors import ConfigError
from ..rl.ppo import PPOConfig
from ..rl.rollout import SamplingConfig

TASK_NAMES = ("safety", "summarize", "instruct")

# The PPO options the experiment sets for each arm; setting them in a config is refused.
PPO_SET_PER_ARM = ("policy", "rm", "prompts", "split", "subset", "out", "overwrite", "resume", "seed", "extraction")
# PPO options the experiment sets from one of its own, for every stage (the message names it).
PPO_SET_BY_EXPERIMENT = {"dtype": "dtype"}

# The extraction ablation of `seq2seq-rm experiment` (each entry: overrides of `extraction`).
DEFAULT_ABLATION = [
    {"magnitude": "prob"},
    {"magnitude": "logratio"},
    {"rematch": "positive"},  # the paper's literal reading
    {"normalize": "mean"},
]


def experiment_ppo_defaults() -> PPOConfig:
    """PPO options for the small models trained from scratch (they need far more than 1e-5); a
    response cut at the length limit is scored with its missing EOS and pays a penalty."""
    return PPOConfig(steps=160, batch_size=16, mini_batch_size=8, ppo_epochs=2, actor_lr=2e-4, critic_lr=2e-4,
                     kl_coef=0.05, save_every=0, sample_every=20, n_samples=4, missing_eos_penalty=1.0,
                     sampling=SamplingConfig(max_new_tokens=64, temperature=1.0))


# Reference demonstrations per task for SFT: summaries need the most before a 1M-parameter model
# copies facts (measured: ~3000 batch-16 steps of summaries; 8 epochs of 2000 learn nothing).
SFT_ROWS = {"safety": 600, "summarize": 2000, "instruct": 1000}

# `seq2seq-rm demo`: the experiment's stages at a size that runs in minutes (tiny models, short
# training). Its models do not learn the tasks well (see the README): it shows the pipeline and
# the report, not evidence.
DEMO_PRESET = {
    "size": "tiny", "sft_rows": 400, "train_pairs": 400, "eval_max_new_tokens": 64,
    "sft": {"epochs": 10.0, "lr": 3e-3},
    "rm": {"epochs": 5.0, "lr": 3e-3},
    "ppo": {"steps": 40, "actor_lr": 1e-4, "critic_lr": 1e-4, "kl_coef": 0.1, "sample_every": 10,
            "sampling": {"max_new_tokens": 48}},
}


@dataclass
class AnnotatorOptions(Options):
    """The simulated annotator's documented biases (tasks/annotator.py): the probability that it
    prefers a bare refusal on a risky-looking prompt, or the longer summary, whatever the oracle
    says; then every label flips with probability ``noise``."""

    refusal_bias: float = opt(0.35, "on risky-looking prompts: prefer the bare refusal with this probability",
                              ge=0, le=1)
    length_bias: float = opt(0.35, "on summaries: prefer the longer one with this probability", ge=0, le=1)
    noise: float = opt(0.10, "flip each label with this probability", ge=0, le=1)


@dataclass
class ExperimentConfig(Options):
    tasks: list = opt(list(TASK_NAMES), "bundled tasks to run: any of safety, summarize, instruct")
    seeds: list = opt([0], "seeds; each seed redraws the preference data and retrains both RMs and every PPO arm")
    size: Literal["tiny", "mini", "small"] = opt("mini", "model size built from scratch (ignored with base_model)")
    dtype: Dtype = opt("float32", DTYPE_HELP + "; every stage: SFT, both RMs, PPO, generation for evaluation")
    base_model: str = opt("", "start from this model instead of a tiny one: a folder, or a .gguf file (converted)")
    sft_data: Literal["reference", "chosen"] = opt(
        "reference", "SFT demonstrations: the tasks' reference responses on prompts of their own (unbiased) | "
                     "the chosen side of the (biased) preference pairs")
    sft_rows: int | dict = opt(dict(SFT_ROWS), "reference demonstrations per task (sft_data=reference): a "
                                               "number, or {task: number} (tasks left out get 400)")
    shared_sft: bool = opt(True, "build the base model and the SFT policy once (sft_seed) and start every seed's "
                                 "RMs and PPO from it; false: every seed trains its own")
    sft_seed: int = opt(0, "seed of the shared base model, tokenizer and SFT policy", ge=0)
    sft_policy: str = opt("", "start every seed's RMs and PPO from this SFT policy (an `sft` output folder, e.g. "
                              "an earlier experiment's shared/sft) instead of building and training one; the SFT "
                              "options (size, sft, sft_rows, sft_data, base_model) are then unused")
    annotator: AnnotatorOptions = opt(AnnotatorOptions(), "the simulated annotator of the preference pairs")
    train_pairs: int = opt(400, "training preference pairs per task", ge=1)
    ppo_prompts: int = opt(300, "training prompts per task for PPO", ge=1)
    test_prompts: int = opt(50, "held-out test prompts per task", ge=1)
    ood_prompts: int = opt(50, "out-of-distribution prompts per task", ge=1)
    sft: TrainOptions = opt(TrainOptions(epochs=24.0, lr=3e-3, batch_size=16, max_length=320), "SFT options")
    rm: TrainOptions = opt(TrainOptions(epochs=3.0, lr=1e-3, batch_size=16, max_length=320), "RM options (both kinds)")
    ppo: PPOConfig = opt(experiment_ppo_defaults(), "PPO options of every arm (policy, rm, prompts, out, seed and "
                                                    "extraction are set by the experiment)")
    extraction: ExtractionConfig = opt(ExtractionConfig(), "token-reward options of the main seq2seq arm")
    ablation: list = opt([], "extra seq2seq arms: dicts of extraction overrides, e.g. [{magnitude: prob}]")
    bias_sweep: list = opt([], "annotator settings to sweep (dicts of annotator options, e.g. [{refusal_bias: 0, "
                               "length_bias: 0}]): each reruns the data, both RMs and the two main arms")
    sweep_seeds: list = opt([0], "seeds of every bias-sweep point")
    eval_max_new_tokens: int = opt(96, "response length limit when generating for evaluation (greedy)", ge=1)
    n_boot: int = opt(2000, "bootstrap resamples for confidence intervals", ge=100)

    def check(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks: give at least one task")
        if self.sft_policy and (self.base_model or not self.shared_sft):
            raise ConfigError("sft_policy replaces the SFT stage: it cannot be combined with "
                              + ("base_model" if self.base_model else "shared_sft=false (every seed training its own)"))
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            raise ConfigError(f"tasks: unknown task(s) {', '.join(map(str, unknown))}; choose from "
                              f"{', '.join(TASK_NAMES)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks: {self.tasks} names a task twice")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of integers >= 0, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {self.seeds} names a seed twice")
        rows = self.sft_rows if isinstance(self.sft_rows, dict) else {}
        for task, n in rows.items():
            if task not in TASK_NAMES:
                raise ConfigError(f"sft_rows: unknown task {task!r}; choose from {', '.join(TASK_NAMES)}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"sft_rows.{task} must be an integer >= 1, got {n!r}")
        if not isinstance(self.sft_rows, dict) and self.sft_rows < 1:
            raise ConfigError(f"sft_rows must be >= 1, got {self.sft_rows}")
        from ..training import check_trainer_args

        for group, trl_configs in (("sft", ("SFTConfig",)), ("rm", ("SFTConfig", "RewardConfig"))):
            opts = getattr(self, group)
            for trl_config in trl_configs if opts.trainer_args else ():  # the rm group trains both kinds
                check_trainer_args(opts.trainer_args, trl_config, opts, where=f"{group}.")
        default = PPOConfig()
        for name, ours in PPO_SET_BY_EXPERIMENT.items():
            if getattr(self.ppo, name) != getattr(default, name):
                raise ConfigError(f"ppo.{name}: the experiment's own `{ours}` option applies to every stage; set "
                                  f"{ours}={getattr(self.ppo, name)} instead")
        check_precision(self.dtype, {"the SFT policy": not self.sft.lora.enabled}, self.sft.bf16, where="sft")
        check_precision(self.dtype, {"the reward models": not self.rm.lora.enabled}, self.rm.bf16, where="rm")
        check_precision(self.dtype, self.ppo._full_training(), self.ppo.bf16, fp16_training_supported=False,
                        where="ppo")
        for name in PPO_SET_PER_ARM:
            if getattr(self.ppo, name) != getattr(default, name):
                raise ConfigError(f"ppo.{name} is set by the experiment for each arm; leave it out of the config")
        for i, entry in enumerate(self.ablation):
            self.arm_extraction(entry, where=f"ablation[{i}]")
        for i, entry in enumerate(self.bias_sweep):
            self.sweep_annotator(entry, where=f"bias_sweep[{i}]")
        if self.bias_sweep and not (self.sweep_seeds and all(isinstance(s, int) and s >= 0 for s in self.sweep_seeds)):
            raise ConfigError(f"sweep_seeds must be a non-empty list of integers >= 0, got {self.sweep_seeds!r}")

    def sweep_annotator(self, overrides: dict, where: str = "bias_sweep") -> AnnotatorOptions:
        """The annotator of a bias-sweep point: ``annotator`` with ``overrides`` on top (checked)."""
        if not isinstance(overrides, dict) or not overrides:
            raise ConfigError(f"{where} must be a mapping of annotator options, e.g. {{refusal_bias: 0.7}}; "
                              f"got {overrides!r}")
        return from_dict(AnnotatorOptions, {**to_dict(self.annotator), **overrides}, prefix=f"{where}.")

    def sft_rows_of(self, task: str) -> int:
        """How many reference demonstrations of ``task`` the SFT stage trains on."""
        return self.sft_rows.get(task, 400) if isinstance(self.sft_rows, dict) else self.sft_rows

    def arm_extraction(self, overrides: dict | None, where: str = "ablation") -> ExtractionConfig:
        """The full extraction options of an arm: ``extraction`` with ``overrides`` on top (checked)."""
        if not overrides:
            return self.extraction
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where} must be a mapping of extraction options, e.g. {{magnitude: prob}}; "
                              f"got {overrides!r}")
        return from_dict(ExtractionConfig, {**to_dict(self.extraction), **overrides}, prefix=f"{where}.")


def arm_name(overrides: dict | None) -> str:
    """``seq2seq`` for the main arm, ``seq2seq[key=value,...]`` for an ablation arm."""
    if not overrides:
        return "seq2seq"
    return "seq2seq[" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) + "]"
