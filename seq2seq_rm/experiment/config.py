"""The experiment's options: ``seq2seq-rm options experiment`` lists them all.

PPO options have one owner, :class:`~seq2seq_rm.rl.ppo.PPOConfig`: the experiment holds one
(``ppo``), whose defaults here suit the tiny models trained from scratch, and fills in what
differs per arm (policy, reward model, prompts, output folder, seed, extraction options).
Every arm of a seed gets the same PPO options, so the baseline is never weakened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ExtractionConfig, Options, TrainOptions, from_dict, opt, to_dict
from ..errors import ConfigError
from ..rl.ppo import PPOConfig
from ..rl.rollout import SamplingConfig

TASK_NAMES = ("safety", "summarize", "instruct")

# The PPO options the experiment sets for each arm; setting them in a config is refused.
PPO_SET_PER_ARM = ("policy", "rm", "prompts", "split", "subset", "out", "overwrite", "resume", "seed", "extraction")

# The extraction ablation of `seq2seq-rm experiment` (each entry: overrides of `extraction`).
DEFAULT_ABLATION = [
    {"magnitude": "prob"},
    {"magnitude": "logratio"},
    {"rematch": "positive"},  # the paper's literal reading
    {"normalize": "mean"},
]


def experiment_ppo_defaults() -> PPOConfig:
    """PPO options for the tiny models trained from scratch (they need far more than 1e-5)."""
    return PPOConfig(steps=40, batch_size=16, mini_batch_size=8, ppo_epochs=2, actor_lr=1e-4, critic_lr=1e-4,
                     kl_coef=0.1, save_every=0, sample_every=10, n_samples=4,
                     sampling=SamplingConfig(max_new_tokens=48, temperature=1.0))


@dataclass
class ExperimentConfig(Options):
    tasks: list = opt(list(TASK_NAMES), "bundled tasks to run: any of safety, summarize, instruct")
    seeds: list = opt([0], "seeds; each seed reruns everything (data, models, PPO)")
    size: Literal["tiny", "small"] = opt("tiny", "tiny-model size (ignored when base_model is set)")
    base_model: str = opt("", "start from this model instead of a tiny one: a folder, or a .gguf file (converted)")
    train_pairs: int = opt(400, "training preference pairs per task", ge=1)
    ppo_prompts: int = opt(300, "training prompts per task for PPO", ge=1)
    test_prompts: int = opt(50, "held-out test prompts per task", ge=1)
    ood_prompts: int = opt(50, "out-of-distribution prompts per task", ge=1)
    sft: TrainOptions = opt(TrainOptions(epochs=10.0, lr=3e-3, batch_size=16, max_length=320), "SFT options")
    rm: TrainOptions = opt(TrainOptions(epochs=5.0, lr=3e-3, batch_size=16, max_length=320), "RM options (both kinds)")
    ppo: PPOConfig = opt(experiment_ppo_defaults(), "PPO options of every arm (policy, rm, prompts, out, seed and "
                                                    "extraction are set by the experiment)")
    extraction: ExtractionConfig = opt(ExtractionConfig(), "token-reward options of the main seq2seq arm")
    ablation: list = opt([], "extra seq2seq arms: dicts of extraction overrides, e.g. [{magnitude: prob}]")
    eval_max_new_tokens: int = opt(64, "response length limit when generating for evaluation (greedy)", ge=1)
    n_boot: int = opt(2000, "bootstrap resamples for confidence intervals", ge=100)

    def check(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks: give at least one task")
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
        default = PPOConfig()
        for name in PPO_SET_PER_ARM:
            if getattr(self.ppo, name) != getattr(default, name):
                raise ConfigError(f"ppo.{name} is set by the experiment for each arm; leave it out of the config")
        if self.ppo.steps < 1:
            raise ConfigError("ppo.steps must be >= 1")
        for i, entry in enumerate(self.ablation):
            self.arm_extraction(entry, where=f"ablation[{i}]")

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
