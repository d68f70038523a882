"""Typed configuration: dataclasses, loaded from YAML and overridden with ``key=value``.

Every option has a default and a one-line help text (``field(metadata={"help": ...})``).
``load_config(RMTrainConfig, "cfg.yaml", ["train.lr=1e-4", "extraction.magnitude=prob"])``
reads the YAML, applies the dotted overrides (values parsed as YAML scalars), and checks
every key and type, so a typo fails at start-up with the list of valid keys rather than
hours later.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def opt(default, help: str, **kw):  # noqa: A002 - "help" mirrors argparse/TRL naming
    """A dataclass field with a help text (mutable defaults go through default_factory)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: _copy(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _copy(x):
    import copy

    return copy.deepcopy(x)


# --------------------------------------------------------------------------------------
# Option groups shared by several commands
# --------------------------------------------------------------------------------------


@dataclass
class TemplateConfig:
    """How prompts and responses are laid out as model input (see data/templates.py)."""

    style: str = opt("auto", "plain | chat | auto (chat when the tokenizer has a chat template)")
    prompt_format: str = opt(
        "Prompt:\n{prompt}\n\nResponse:\n",
        "plain style: what the policy (and the scalar RM) sees before the response",
    )
    source_format: str = opt(
        "Prompt:\n{prompt}\n\nResponse:\n{response}\n\nImproved response:\n",
        "plain style: seq2seq RM source; the target (a response) follows it",
    )
    rewrite_instruction: str = opt(
        "Rewrite your response to make it better.",
        "chat style: user turn after the response under review that asks the seq2seq RM for its version",
    )
    system_prompt: str | None = opt(None, "chat style: optional system message put before the prompt")


@dataclass
class ExtractionConfig:
    """Token-level reward extraction options (method.md, 'Token-level reward extraction').

    Defaults: +1 for every token the RM would also have written up to the first
    divergence, -1 for every token where it would have written something else, and 0 for
    tokens that agree again after the first divergence (``rematch=zero``). The paper's
    literal reading keeps those at +1 (``rematch=positive``); on the bundled tasks that
    rewards length (each extra agreeing token adds +1) and lost to the scalar baseline,
    while ``zero`` beat it (README, "The demo and the experiment").
    """

    magnitude: str = opt(
        "constant",
        "constant: +r_pos / -r_neg | prob: p(y_t) / -(1-p(y_t)) | logratio: +r_pos / log p(y_t) - log p(argmax)",
    )
    r_pos: float = opt(1.0, "reward of a token the RM agrees with (constant and logratio magnitudes)")
    r_neg: float = opt(1.0, "penalty of a diverging token (constant magnitude)")
    rematch: str = opt(
        "zero",
        "zero | positive: reward of agreeing tokens after the first divergence (zero: chosen by the "
        "project's ablation, see README; positive: the paper's literal reading)",
    )
    normalize: str = opt("none", "none (rewards sum over tokens) | mean (each token reward divided by length)")
    clip: float | None = opt(None, "clip each token reward to [-clip, clip]; null for no clipping")
    sequence_score: str = opt(
        "mean", "how rm eval turns token rewards into one score: mean | sum | agree_fraction"
    )


@dataclass
class LoraOptions:
    enabled: bool = opt(False, "train LoRA adapters (PEFT) instead of all weights; merged on save")
    r: int = opt(8, "LoRA rank")
    alpha: int = opt(16, "LoRA alpha")
    dropout: float = opt(0.0, "LoRA dropout")
    target_modules: str = opt("all-linear", "modules to adapt (PEFT target_modules)")


@dataclass
class TrainOptions:
    """Optimisation options shared by the supervised stages (RM training, SFT)."""

    epochs: float = opt(1.0, "passes over the training examples")
    lr: float = opt(3e-4, "peak learning rate (3e-4 suits the tiny models trained from scratch; ~1e-5 for real LMs)")
    batch_size: int = opt(8, "examples per device per optimisation step (before accumulation)")
    grad_accum: int = opt(1, "gradient accumulation steps")
    max_length: int = opt(512, "longest token sequence (source+target, or prompt+response)")
    truncation: str = opt(
        "truncate", "truncate (cut the source/prompt from the left) | skip (drop over-long examples); both counted"
    )
    seed: int = opt(0, "random seed for initialisation order, shuffling and mapping mix")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_ratio: float = opt(0.05, "fraction of steps of linear warm-up")
    scheduler: str = opt("cosine", "learning-rate schedule (transformers SchedulerType)")
    bf16: bool = opt(False, "bf16 autocast (about 2x faster on CPU for 10-30M models)")
    logging_steps: int = opt(10, "log every N optimisation steps (console + TensorBoard)")
    lora: LoraOptions = opt(LoraOptions(), "LoRA options")


@dataclass
class MappingConfig:
    """Which seq2seq training examples are built from each preference pair."""

    correction: bool = opt(True, "Correction Mapping: source prompt+rejected -> target chosen")
    identity_ratio: float = opt(
        1.0, "Identity Mapping examples per pair (prompt+chosen -> chosen); 1.0 = one each (1:1 mix), 0.5 = half"
    )


@dataclass
class RMTrainConfig:
    kind: str = opt("seq2seq", "seq2seq (sequence MLE, keeps the LM head) | scalar (Bradley-Terry baseline)")
    model: str = opt("", "base model: folder, hub id, or folder holding a GGUF file")
    gguf_file: str | None = opt(None, "GGUF file name inside `model`")
    data: str = opt("", "preference data: JSONL/JSON/Parquet file, datasets folder, or hub name")
    data_format: str = opt("auto", "auto | standard | conversational | pku_saferlhf | summarize_from_feedback | hh_rlhf")
    pku_preference: str = opt("better", "PKU-SafeRLHF: which label defines chosen: better | safer")
    strict_data: bool = opt(False, "turn skipped rows (empty, identical pair) into errors")
    limit: int | None = opt(None, "use only the first N preference pairs")
    out: str = opt("", "output folder (written atomically)")
    trust_remote_code: bool = opt(False, "allow custom model code from the model folder / hub")
    train: TrainOptions = opt(TrainOptions(), "optimisation options")
    template: TemplateConfig = opt(TemplateConfig(), "input layout")
    mapping: MappingConfig = opt(MappingConfig(), "seq2seq mappings")
    extraction: ExtractionConfig = opt(ExtractionConfig(), "token reward options stored with the RM")


# --------------------------------------------------------------------------------------
# Loading and overriding
# --------------------------------------------------------------------------------------


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value, tp, where: str):
    """Check/convert ``value`` to annotation ``tp`` (a small subset: scalars, Optional, dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise ConfigError(f"{where}: expected a {origin.__name__}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with a suggestion."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            hint = difflib.get_close_matches(key, list(types_), n=1)
            raise ConfigError(
                f"unknown option '{prefix}{key}'"
                + (f" (did you mean '{prefix}{hint[0]}'?)" if hint else "")
                + f"; valid: {', '.join(prefix + k for k in types_)}"
            )
        kwargs[key] = _coerce(value, types_[key], prefix + key)
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{p}' is not a group")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': cannot parse value: {e}") from None
    # YAML reads "1e-4" as a string; accept scientific notation as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and not value.isalpha() else value
        except ValueError:
            pass
    return key.strip(), value


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None):
    """YAML file (optional) < ``base`` dict (e.g. CLI flags) < ``key=value`` overrides."""
    tree: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of options")
        tree = loaded
    for key, value in (base or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return from_dict(cls, tree)


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every option: used by ``--help-config`` and the README."""
    rows = []
    inst = cls()
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(type(value), prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, repr(value), f.metadata.get("help", "")))
    return rows
