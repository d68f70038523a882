"""``seq2seq-rm sft``: supervised fine-tuning of the policy before PPO.

Each example is ``P(x) ++ R(y)``: the prompt rendered by :func:`render_prompt` (the chat
template with a generation prompt when the tokenizer has one, ``template.prompt_format``
otherwise) followed by the response ids and EOS (:func:`encode_response`). The loss is on
``R(y)`` only (``completion_mask``). Prompt and response are tokenised separately, which is
exactly how a rollout lays them out: the engine encodes ``P(x)`` and the policy emits
``R(y)`` token by token (see ``rl/rollout.py``), so SFT, generation and PPO agree.

Targets: ``response_field=response`` for prompt/response rows, ``chosen`` for preference
rows (any format :func:`load_preferences` reads), ``auto`` picks ``response`` when the first
row has a ``response`` column, else ``chosen``.

The output folder is written atomically: a ``save_pretrained`` folder (LoRA adapters merged
in) plus ``sft.json`` holding the template (which ``generate`` and PPO reuse), the data
report, example statistics and the loss curve. A failed run leaves nothing at ``--out``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import Options, TemplateConfig, TrainOptions, opt, to_dict
from .data.records import PreferenceRecord, PromptRecord
from .data.templates import encode_response, encode_text, render_prompt, resolve_style
from .errors import ConfigError, DataError, Seq2SeqRMError
from .io import atomic_dir, atomic_write_json
from .layout import fit_to_length
from .outputs import META_FILES, check_output_dir
from .training import train_and_save, trainer_kwargs

log = logging.getLogger(__name__)

SFT_META_FILE = META_FILES["sft"]


@dataclass
class SFTRunConfig(Options):
    model: str = opt("", "base model: folder, hub id, or folder holding a GGUF file")
    gguf_file: str | None = opt(None, "GGUF file name inside `model`")
    data: str = opt("", "prompt/response rows or preference rows: JSONL/JSON/Parquet, datasets folder, hub name")
    data_format: Literal["auto", "prompt", "standard", "conversational", "pku_saferlhf", "summarize_from_feedback",
                         "hh_rlhf"] = opt("auto", "prompt: prompt/response rows; or a preference format (trains on chosen)")
    split: str | None = opt(None, "split of a datasets folder, hub dataset or JSON object (default: train)")
    subset: str | None = opt(None, "hub dataset subset / configuration name")
    out: str = opt("", "output folder (written atomically)")
    overwrite: bool = opt(False, "replace an earlier SFT policy at `out`")
    limit: int | None = opt(None, "use only the first N usable rows", ge=1)
    response_field: Literal["auto", "response", "chosen"] = opt(
        "auto", "training target: response | chosen (preference rows) | auto (response if the rows have it)"
    )
    trust_remote_code: bool = opt(False, "allow custom model code from the model folder / hub")
    train: TrainOptions = opt(TrainOptions(), "optimisation options")
    template: TemplateConfig = opt(TemplateConfig(), "prompt layout (the rollout engine uses the same one)")


@dataclass
class SFTStats:
    records: int = 0
    examples: int = 0
    truncated: int = 0
    skipped_too_long: int = 0
    prompt_tokens: int = 0  # totals over kept examples, after truncation
    response_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _target(rec) -> str:
    text = rec.chosen if isinstance(rec, PreferenceRecord) else rec.response
    if not isinstance(text, str):
        where = (rec.origin.file, rec.origin.row) if rec.origin else (None, None)
        raise DataError("this record has no response to train on", *where, field="response")
    return text


def build_sft_examples(
    records: list[PromptRecord | PreferenceRecord],
    tokenizer,
    template: TemplateConfig,
    max_length: int,
    truncation: str = "truncate",
) -> tuple[list[dict], SFTStats]:
    """Tokenised SFT examples ``{"input_ids", "completion_mask"}`` with ``input_ids = P(x) ++ R(y)``.

    ``completion_mask`` is 1 on ``R(y)`` (response + EOS), the only tokens with a loss. The
    target is ``record.response`` (``record.chosen`` for a :class:`PreferenceRecord`).
    Over-long examples follow :func:`fit_to_length`: ``truncate`` cuts the prompt from the
    left (and the response from the right only when it alone leaves too little room),
    ``skip`` drops them; both are counted. Raises when nothing is left.
    """
    style = resolve_style(template, tokenizer)
    stats = SFTStats(records=len(records))
    examples = []
    for rec in records:
        prompt = encode_text(render_prompt(rec.prompt, template, tokenizer, style), tokenizer, style)
        response = encode_response(_target(rec), tokenizer)
        prompt, response, status = fit_to_length(prompt, response, max_length, truncation)
        if status == "skipped":
            stats.skipped_too_long += 1
            continue
        stats.truncated += status == "truncated"
        stats.prompt_tokens += len(prompt)
        stats.response_tokens += len(response)
        examples.append({"input_ids": prompt + response, "completion_mask": [0] * len(prompt) + [1] * len(response)})
    stats.examples = len(examples)
    if not examples:
        raise Seq2SeqRMError(
            f"no SFT examples left: all {stats.skipped_too_long} were longer than max_length={max_length} "
            "(raise train.max_length or use train.truncation=truncate)"
        )
    return examples, stats


def _first_row(path: str, split: str | None = None, subset: str | None = None) -> dict:
    from .data.loading import read_rows

    rows, _ = read_rows(path, split, subset)
    try:
        for _, raw in rows:
            return raw
    finally:
        if hasattr(rows, "close"):
            rows.close()
    raise DataError("no rows found", path)


def resolve_response_field(cfg: SFTRunConfig) -> str:
    """``response`` or ``chosen``: what ``response_field=auto`` means for this data."""
    field, fmt = cfg.response_field, cfg.data_format
    if field == "auto":
        field = "response" if fmt == "prompt" else "chosen" if fmt != "auto" else None
        field = field or ("response" if "response" in _first_row(cfg.data, cfg.split, cfg.subset) else "chosen")
    if field == "response" and fmt not in ("auto", "prompt"):
        raise ConfigError(f"response_field=response reads prompt/response rows, not data_format={fmt}")
    if field == "chosen" and fmt == "prompt":
        raise ConfigError("response_field=chosen needs preference rows, not data_format=prompt")
    return field


def load_sft_records(cfg: SFTRunConfig):
    """``(records, report, field)``: the training records and where their targets come from."""
    from .data.loading import load_preferences, load_prompts

    field = resolve_response_field(cfg)
    if field == "response":
        records, report = load_prompts(cfg.data, require_response=True, limit=cfg.limit, split=cfg.split,
                                       subset=cfg.subset)
    else:
        fmt = "auto" if cfg.data_format in ("auto", "prompt") else cfg.data_format
        records, report = load_preferences(cfg.data, format=fmt, limit=cfg.limit, split=cfg.split, subset=cfg.subset)
    return records, report, field


def _check(cfg: SFTRunConfig) -> None:
    for name in ("model", "data", "out"):
        if not getattr(cfg, name):
            raise ConfigError(f"--{name} is required")
    check_output_dir(cfg.out, "sft", cfg.overwrite, inputs=[cfg.data, cfg.model])


def build_sft_trainer(cfg: SFTRunConfig, records, tokenizer, out_dir: Path):
    """TRL's SFTTrainer on our own tokenisation (loss on ``R(y)`` only); returns ``(trainer, stats)``."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from .models.loading import ensure_pad_token, load_causal_lm
    from .models.lora import apply_lora

    opts, lora = cfg.train, cfg.train.lora
    model = load_causal_lm(cfg.model, gguf_file=cfg.gguf_file, trust_remote_code=cfg.trust_remote_code)
    ensure_pad_token(tokenizer, model)
    examples, stats = build_sft_examples(records, tokenizer, cfg.template, opts.max_length, opts.truncation)
    if lora.enabled:
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    args = SFTConfig(**trainer_kwargs(opts, out_dir), completion_only_loss=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    return trainer, stats


def train_sft(cfg: SFTRunConfig) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data`` (loss on response tokens) and write it to ``cfg.out``."""
    _check(cfg)
    from .models.loading import load_tokenizer
    records, report, field = load_sft_records(cfg)
    log.info("%s; SFT target: %s", report.summary(), field)
    tokenizer = load_tokenizer(cfg.model, gguf_file=cfg.gguf_file, trust_remote_code=cfg.trust_remote_code)
    out = Path(cfg.out)

    def stop_where_sft_put_eos(model):
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tokenizer.pad_token_id
            if gen.eos_token_id is None:
                gen.eos_token_id = tokenizer.eos_token_id

    with atomic_dir(out, replace=cfg.overwrite) as tmp:
        trainer, stats = build_sft_trainer(cfg, records, tokenizer, tmp)
        meta = train_and_save(trainer, stats, cfg.train, tokenizer, tmp, report, cfg.data, stop_where_sft_put_eos)
        atomic_write_json(tmp / SFT_META_FILE, {
            "kind": "sft",
            "template": to_dict(cfg.template),
            "style": resolve_style(cfg.template, tokenizer),
            "response_field": field,
            "base_model": cfg.model,
            **meta,
        })
    log.info("wrote SFT policy to %s", out)
    return out
