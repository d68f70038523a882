"""Typed configuration: dataclasses with help texts, checked when they are built.

Every option has a default and a one-line help text (:func:`opt`). Choices are typed
``Literal[...]`` and ranges are declared on the field (``opt(8, "...", ge=1)``), so a bad value
stops when the config is read, before any work: every config class derives from
:class:`Options`, whose ``__post_init__`` checks choices and ranges (and a class may add
cross-field checks in ``check``).

One precedence rule for every command (:func:`load_config`), later wins:

    defaults < the command's preset < --config YAML < flags < key=value overrides

``load_config(RMTrainConfig, "cfg.yaml", ["train.lr=1e-4"], flags={"train.epochs": 3})``
reads the YAML, applies the flags that were given and the dotted overrides (values parsed
as YAML scalars), and checks every key, type, choice and range, naming the option.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import operator
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

_RANGES = (("gt", operator.gt, ">"), ("ge", operator.ge, ">="), ("lt", operator.lt, "<"), ("le", operator.le, "<="))


def opt(default, help: str, **checks):  # noqa: A002 - "help" mirrors argparse/TRL naming
    """A dataclass field with a help text and optional range checks ``gt``/``ge``/``lt``/``le``.

    Mutable defaults (lists, dicts, dataclasses) go through ``default_factory``.
    """
    unknown = set(checks) - {name for name, _, _ in _RANGES}
    if unknown:
        raise TypeError(f"opt: unknown checks {sorted(unknown)}")
    metadata = {"help": help, **checks}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata)
    return field(default=default, metadata=metadata)


_HINTS: dict[type, dict[str, Any]] = {}


def _field_types(cls) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def choices_of(tp) -> tuple | None:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``X | None``), else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = choices_of(arg)
            if found:
                return found
    return None


def _not_one_of(name: str, value, choices) -> ConfigError:
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return ConfigError(
        f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
    )


class Options:
    """Base of every config dataclass: choices and ranges are checked when an instance is built
    (from YAML, from flags, or in code). Subclasses add cross-field checks in ``check``."""

    def __post_init__(self) -> None:
        types_ = _field_types(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = choices_of(types_[f.name])
            if choices and value not in choices and value is not None:
                raise _not_one_of(f.name, value, choices)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            for key, op, word in _RANGES:
                bound = f.metadata.get(key)
                if bound is not None and not op(value, bound):
                    raise ConfigError(f"{f.name} must be {word} {bound}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Cross-field checks; raise ConfigError naming the options."""


# --------------------------------------------------------------------------------------
# Option groups shared by several commands
# --------------------------------------------------------------------------------------


@dataclass
class TemplateConfig(Options):
    """How prompts and responses are laid out as model input (see data/templates.py)."""

    style: Literal["auto", "plain", "chat"] = opt(
        "auto", "chat: the tokenizer's chat template; plain: the text formats below; auto: chat when there is one")
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

    def check(self) -> None:
        for name, needed in (("prompt_format", ("{prompt}",)), ("source_format", ("{prompt}", "{response}"))):
            missing = [k for k in needed if k not in getattr(self, name)]
            if missing:
                raise ConfigError(f"template.{name} must contain {' and '.join(missing)}")


@dataclass
class ExtractionConfig(Options):
    """Token-level reward extraction options (method.md, 'Token-level reward extraction').

    Defaults: +1 for every token the RM would also have written up to the first
    divergence, -1 for every token where it would have written something else, and 0 for
    tokens that agree again after the first divergence (``rematch=zero``). The paper's
    literal reading keeps those at +1 (``rematch=positive``); on the bundled tasks that
    rewards length (each extra agreeing token adds +1) and lost to the scalar baseline,
    while ``zero`` beat it (README, "The demo and the experiment").
    """

    magnitude: Literal["constant", "prob", "logratio"] = opt(
        "constant",
        "constant: +r_pos / -r_neg | prob: p(y_t) / -(1-p(y_t)) | logratio: +r_pos / log p(y_t) - log p(argmax)",
    )
    r_pos: float = opt(1.0, "reward of a token the RM agrees with (constant and logratio magnitudes)", ge=0)
    r_neg: float = opt(1.0, "penalty of a diverging token (constant magnitude)", ge=0)
    rematch: Literal["zero", "positive"] = opt(
        "zero",
        "reward of agreeing tokens after the first divergence (zero: chosen by the project's ablation, "
        "see README; positive: the paper's literal reading)",
    )
    normalize: Literal["none", "mean"] = opt(
        "none", "none (rewards sum over tokens) | mean (each token reward divided by length)")
    clip: float | None = opt(None, "clip each token reward to [-clip, clip]; null for no clipping", gt=0)
    sequence_score: Literal["mean", "sum", "agree_fraction"] = opt(
        "mean", "how rm eval turns token rewards into one score")


@dataclass
class LoraOptions(Options):
    enabled: bool = opt(False, "train LoRA adapters (PEFT) instead of all weights; merged on save")
    r: int = opt(8, "LoRA rank", ge=1)
    alpha: int = opt(16, "LoRA alpha", gt=0)
    dropout: float = opt(0.0, "LoRA dropout", ge=0, lt=1)
    target_modules: str = opt("all-linear", "modules to adapt (PEFT target_modules)")


# --------------------------------------------------------------------------------------
# Precision: the weights' storage dtype, and what each device can train in it
# --------------------------------------------------------------------------------------

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
DTYPE_HELP = ("storage dtype of the model weights (every model the command loads): float32 | bfloat16 | float16 | "
              "auto (the checkpoint's own config.dtype; float32 when it records none). Trained weights stay float32: "
              "half dtypes need LoRA for training (see README, 'Precision and memory')")
HALF_DTYPES = ("bfloat16", "float16")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_precision(dtype: str, full_training: dict[str, bool], bf16_autocast: bool = False,
                    fp16_training_supported: bool = True, where: str = "", master_weights: bool = False) -> None:
    """Refuse a precision set-up that would not train (or not run) as asked.

    ``dtype``: the storage dtype (``auto`` is checked again once resolved against the checkpoint);
    ``full_training``: ``{role: True when all of its weights train (no LoRA)}`` for each model the
    command trains (empty for inference); ``bf16_autocast``: the ``bf16`` mixed-precision flag;
    ``fp16_training_supported``: False for a loop with no loss scaling (PPO); ``master_weights``:
    the trainer keeps float32 master weights and optimizer states for half-precision weights
    (DeepSpeed with ``bf16.enabled``), which makes full-parameter bf16 training safe.

    The rules (README, "Precision and memory"):

    * half-precision *trained* weights are refused: AdamW's update of a bfloat16 weight is rounded to
      8 bits of mantissa, so an update below ~1/256 of the weight (most of them at lr 1e-5) is lost
      (the "pure bf16" footgun). Half dtypes train through LoRA: the frozen base is stored in
      ``dtype``, adapters and heads in float32. Full-parameter mixed precision is ``dtype=float32``
      with ``bf16=true`` (bf16 autocast over float32 weights);
    * float16 training needs autocast with loss scaling (a GradScaler), which PyTorch offers on
      CUDA only: refused on CPU, and in loops that have no loss scaling;
    * ``bf16=true`` (bf16 autocast) over float16 weights mixes two half formats: refused.
    """
    if dtype == "auto":
        return
    prefix = f"{where}: " if where else ""
    full = [role for role, is_full in full_training.items() if is_full]
    if dtype in HALF_DTYPES and full and not (master_weights and dtype == "bfloat16"):
        raise ConfigError(
            f"{prefix}dtype={dtype} with full-parameter training of {' and '.join(full)}: the trained weights and "
            f"AdamW's updates would be stored in {dtype}, which rounds away updates smaller than ~1/256 of a weight "
            "(most updates at lr 1e-5), so training would silently stall. Train LoRA adapters instead (the base stays "
            f"in {dtype}, the adapters in float32), or keep dtype=float32 and set bf16=true (bf16 autocast over "
            "float32 weights)")
    if dtype == "float16" and full_training:
        if not fp16_training_supported:
            raise ConfigError(f"{prefix}dtype=float16 training needs loss scaling (a GradScaler), which this training "
                              "loop does not have; use dtype=bfloat16 (same memory, no loss scaling needed)")
        if not _cuda_available():
            raise ConfigError(
                f"{prefix}dtype=float16 training needs float16 autocast with loss scaling (a GradScaler), which "
                "PyTorch offers on CUDA only, and no CUDA device is available; use dtype=bfloat16 (works on CPU) or "
                "float32. float16 stays available for inference (generate, eval --judge hf:)")
    if dtype == "float16" and bf16_autocast:
        raise ConfigError(f"{prefix}bf16=true (bf16 autocast) with dtype=float16 weights mixes two half-precision "
                          "formats; use dtype=bfloat16, or dtype=float32 with bf16=true")


MIN_MAX_LENGTH = 9  # layout.MIN_SOURCE_TOKENS + 1: room for a source and one target token


@dataclass
class TrainOptions(Options):
    """Optimisation options shared by the supervised stages (RM training, SFT)."""

    epochs: float = opt(1.0, "passes over the training examples", gt=0)
    lr: float = opt(3e-4, "peak learning rate (3e-4 suits the tiny models trained from scratch; ~1e-5 for real LMs)",
                    gt=0)
    batch_size: int = opt(8, "examples per device per optimisation step (before accumulation)", ge=1)
    grad_accum: int = opt(1, "gradient accumulation steps", ge=1)
    max_length: int = opt(512, "longest token sequence (source+target, or prompt+response)", ge=MIN_MAX_LENGTH)
    truncation: Literal["truncate", "skip"] = opt(
        "truncate", "truncate (cut the source/prompt from the left) | skip (drop over-long examples); both counted"
    )
    seed: int = opt(0, "random seed for initialisation order, shuffling and mapping mix", ge=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0)
    warmup_ratio: float = opt(0.05, "fraction of steps of linear warm-up", ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                       "constant_with_warmup", "inverse_sqrt"] = opt("cosine", "learning-rate schedule")
    bf16: bool = opt(False, "bf16 mixed precision: bf16 autocast of the forward pass over the stored weights (their "
                            "dtype is `dtype`); speed depends on the hardware's bf16 support")
    gradient_checkpointing: bool = opt(
        False, "recompute activations in the backward pass instead of storing them (less memory; slower: each layer "
               "runs forward twice); non-reentrant torch checkpointing")
    logging_steps: int = opt(10, "log every N optimisation steps (console + TensorBoard)", ge=1)
    group_by_length: bool = opt(
        True, "batch examples of similar length together (less padding: much faster when lengths vary)")
    lora: LoraOptions = opt(LoraOptions(), "LoRA options")
    # Run folder, logging and pass-through (seq2seq_rm/train_run.py, training.trainer_kwargs)
    save_steps: int = opt(500, "checkpoint every N optimisation steps and at the end, into OUT.run/checkpoints/ "
                               "(0: only on Ctrl-C); --resume continues from the newest", ge=0)
    save_total_limit: int = opt(2, "checkpoints kept in OUT.run/checkpoints/ (the newest)", ge=1)
    report_to: str | list = opt(
        "tensorboard", "where training metrics go: tensorboard | wandb | trackio | none, or a list of them "
                       "(each imported only when chosen; it must be installed)")
    trainer_args: dict = opt(
        {}, "more TrainingArguments / TRL SFTConfig or RewardConfig fields, passed through to the trainer "
            "(train.trainer_args.max_grad_norm=0.5, train.trainer_args.deepspeed=ds.json, ...fsdp=...); "
            "the ones the toolkit sets itself are refused with the option to use instead")

    def check(self) -> None:
        from .training import check_report_to

        check_report_to(self.report_to)  # trainer_args: checked by each stage, which knows its TRL config


@dataclass
class MappingConfig(Options):
    """Which seq2seq training examples are built from each preference pair."""

    correction: bool = opt(True, "Correction Mapping: source prompt+rejected -> target chosen")
    identity_ratio: float = opt(
        1.0, "Identity Mapping examples per pair (prompt+chosen -> chosen); 1.0 = one each (1:1 mix), 0.5 = half",
        ge=0,
    )

    def check(self) -> None:
        if not self.correction and self.identity_ratio <= 0:
            raise ConfigError("mapping: both mappings are off; enable mapping.correction or set identity_ratio > 0")


def check_columns_option(columns: dict) -> None:
    """The ``columns`` option: our column names -> the dataset's (checked by the data loader)."""
    from .data.loading import check_columns

    check_columns(columns)


PreferenceFormat = Literal["auto", "standard", "conversational", "pku_saferlhf", "summarize_from_feedback", "hh_rlhf"]


@dataclass
class RMTrainConfig(Options):
    kind: Literal["seq2seq", "scalar"] = opt(
        "seq2seq", "seq2seq (sequence MLE, keeps the LM head) | scalar (Bradley-Terry baseline)")
    model: str = opt("", "base model: folder, hub id, or folder holding a GGUF file")
    gguf_file: str | None = opt(None, "GGUF file name inside `model`")
    data: str = opt("", "preference data: JSONL/JSON/Parquet file, datasets folder, or hub name")
    data_format: PreferenceFormat = opt("auto", "preference data format")
    split: str | None = opt(None, "split of a datasets folder, hub dataset or JSON object (default: train)")
    subset: str | None = opt(None, "hub dataset subset / configuration name")
    pku_preference: Literal["better", "safer"] = opt("better", "PKU-SafeRLHF: which label defines chosen")
    pku_drop_both_unsafe: bool = opt(
        False, "PKU-SafeRLHF: drop pairs whose two responses are both labelled unsafe (counted as skipped)")
    columns: dict = opt({}, "the dataset's own column names: columns.prompt=question columns.chosen=good ... "
                            "(names: prompt, chosen, rejected, response, completion, text, messages)")
    strict_data: bool = opt(False, "turn skipped rows (any problem of one row: malformed, missing field, wrong type, "
                                   "bad label, empty, identical pair) into errors")
    limit: int | None = opt(None, "use only the first N preference pairs", ge=1)
    out: str = opt("", "output folder (written atomically); checkpoints and logs go to OUT.run/ beside it")
    overwrite: bool = opt(False, "replace an earlier reward model at `out` and its run folder OUT.run/")
    resume: bool = opt(False, "continue the run in OUT.run/ from its newest checkpoint")
    trust_remote_code: bool = opt(False, "allow custom model code from the model folder / hub")
    dtype: Dtype = opt("float32", DTYPE_HELP)
    train: TrainOptions = opt(TrainOptions(), "optimisation options")
    template: TemplateConfig = opt(TemplateConfig(), "input layout")
    mapping: MappingConfig = opt(MappingConfig(), "seq2seq mappings")
    extraction: ExtractionConfig = opt(ExtractionConfig(), "token reward options stored with the RM")

    def check(self) -> None:
        check_columns_option(self.columns)
        check_resume_option(self)
        check_precision(self.dtype, {f"the {self.kind} RM": not self.train.lora.enabled}, self.train.bf16)
        if self.train.trainer_args:
            from .training import check_trainer_args

            check_trainer_args(self.train.trainer_args, "SFTConfig" if self.kind == "seq2seq" else "RewardConfig",
                               self.train)


def check_resume_option(cfg) -> None:
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume and overwrite contradict each other: resume continues the run in OUT.run/, "
                          "overwrite replaces it")


# --------------------------------------------------------------------------------------
# Loading and overriding
# --------------------------------------------------------------------------------------


def _coerce(value, tp, where: str):
    """Check/convert ``value`` to annotation ``tp`` (scalars, Literal, Optional, lists, dataclasses)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _not_one_of(where, value, typing.get_args(tp))
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
            raise ConfigError(f"{where}: expected a mapping of options, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin in (list, dict) or tp in (list, dict):
        kind = origin or tp
        if not isinstance(value, kind):
            raise ConfigError(f"{where}: expected a {kind.__name__}, got {value!r}")
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
    """Build dataclass ``cls`` from a nested dict: unknown keys (with a suggestion), types,
    choices and ranges are checked; errors name the dotted option."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            hint = difflib.get_close_matches(key, list(types_), n=1)
            raise ConfigError(
                f"unknown option '{prefix}{key}'"
                + (f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; valid: {', '.join(prefix + k for k in types_)}")
            )
        kwargs[key] = _coerce(value, types_[key], prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


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


# Options whose value is itself a mapping: one leaf when options are flattened for comparison.
MAPPING_OPTIONS = ("trainer_args", "columns", "sft_rows")


def flatten_options(tree: dict, prefix: str = "") -> dict:
    """``to_dict`` output as ``{"group.option": value}`` (what a resume compares and reports);
    a mapping-valued option (:data:`MAPPING_OPTIONS`) stays one leaf."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v and k not in MAPPING_OPTIONS:
            out.update(flatten_options(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, merging nested mappings (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': cannot parse value: {e}") from None
    # YAML 1.1 reads "1e-4" as a string; accept scientific notation as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and not value.isalpha() else value
        except ValueError:
            pass
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of options")
    return loaded


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                flags: dict | None = None, preset: dict | None = None):
    """Build ``cls`` from, later winning: its defaults < ``preset`` (what a sub-command sets) <
    the YAML file at ``path`` < ``flags`` (dotted keys; None = flag not given) < ``key=value``
    ``overrides``. Everything is checked before this returns.

    The layers are merged as trees over the defaults of ``cls`` itself, so a YAML file that
    sets one option of a group (``sft: {epochs: 1}``) keeps the group's other defaults.
    """
    tree = _merge(_merge(to_dict(cls()), preset or {}), read_yaml(path) if path else {})
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return from_dict(cls, tree)


def allowed_values(f: dataclasses.Field, tp) -> str:
    """What a field accepts, as shown by ``seq2seq-rm options``: its choices or its range."""
    choices = choices_of(tp)
    if choices:
        return " | ".join(map(str, choices))
    parts = [f"{word} {f.metadata[key]}" for key, _, word in _RANGES if f.metadata.get(key) is not None]
    return ", ".join(parts)


def describe(cls_or_obj, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, default, allowed values, help) for every option of a config class (or of an
    instance, whose values are shown as the defaults: nested groups keep their parent's defaults)."""
    inst = cls_or_obj() if isinstance(cls_or_obj, type) else cls_or_obj
    types_ = _field_types(type(inst))
    rows = []
    for f in dataclasses.fields(inst):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, repr(value), allowed_values(f, types_[f.name]), f.metadata.get("help", "")))
    return rows
