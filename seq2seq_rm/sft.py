"""``seq2seq-rm sft``: supervised fine-tuning of the policy before PPO.

The layout rule: each example is ``P(x) ++ R(y)``: the prompt rendered by
:func:`render_prompt` (the chat template with a generation prompt when the tokenizer has one,
``template.prompt_format`` otherwise) followed by the response ids and EOS
(:func:`encode_response`). The loss is on ``R(y)`` only (``completion_mask``). Prompt and
response are tokenised separately, which is exactly how a rollout lays them out: the engine
encodes ``P(x)`` and the policy emits ``R(y)`` token by token (see ``rl/rollout.py``), so SFT,
generation and PPO agree.

Data formats (``data_format``, detected from the first row by ``auto``; see
:func:`seq2seq_rm.data.loading.load_sft`), and what ``x`` and ``y`` are:

* ``prompt``: ``prompt`` and ``response`` columns; ``y`` is the response.
* ``prompt_completion`` (TRL): ``prompt`` and ``completion``, strings or lists of messages;
  ``y`` is the completion (the final assistant message's content for messages, earlier
  completion messages join the prompt).
* ``messages`` (TRL conversational): ``y`` is the final assistant turn, ``x`` every message
  before it (loss on the final assistant turn only; earlier assistant turns are context).
* ``text`` (TRL language modelling): no template and no prompt: the example is the text's
  tokens (with the tokenizer's special tokens) plus EOS, and the loss is on every token.
* a preference format (``standard``, ``conversational``, ``pku_saferlhf``,
  ``summarize_from_feedback``, ``hh_rlhf``): ``y`` is chosen.

``response_field`` is kept for preference data that also has a ``response`` column:
``response`` reads the SFT formats above, ``chosen`` a preference format, ``auto`` the first
row's format.

The output folder is written atomically: a ``save_pretrained`` folder (LoRA adapters merged
in) plus ``sft.json`` holding the template (which ``generate`` and PPO reuse), the data
report, example statistics and the loss curve. A failed run leaves nothing at ``--out``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import (
    DTYPE_HELP,
    Dtype,
    Options,
    TemplateConfig,
    TrainOptions,
    check_columns_option,
    check_precision,
    check_resume_option,
    opt,
    to_dict,
)
from .data.records import PreferenceRecord, PromptRecord, TextRecord
from .data.templates import encode_response, encode_text, render_prompt, resolve_style
from .errors import ConfigError, DataError, Seq2SeqRMError
from .io import atomic_write_json
from .layout import fit_to_length
from .outputs import META_FILES, check_output_dir
from .train_run import shared_output_dir
from .training import no_dataset_bars, resolve_stage_dtype, train_and_save, trainer_kwargs

log = logging.getLogger(__name__)

SFT_META_FILE = META_FILES["sft"]


@dataclass
class SFTRunConfig(Options):
    model: str = opt("", "base model: folder, hub id, or folder holding a GGUF file")
    gguf_file: str | None = opt(None, "GGUF file name inside `model`")
    data: str = opt("", "SFT rows (prompt/response, prompt/completion, messages, text) or preference rows: "
                        "JSONL/JSON/Parquet, datasets folder, hub name")
    data_format: str = opt(
        "auto", "auto | prompt | prompt_completion | messages | text | a preference format (standard, "
                "conversational, pku_saferlhf, summarize_from_feedback, hh_rlhf: trains on chosen)")
    split: str | None = opt(None, "split of a datasets folder, hub dataset or JSON object (default: train)")
    subset: str | None = opt(None, "hub dataset subset / configuration name")
    columns: dict = opt({}, "the dataset's own column names: columns.text=content columns.prompt=question ... "
                            "(names: prompt, chosen, rejected, response, completion, text, messages)")
    strict_data: bool = opt(False, "turn skipped rows (any problem of one row) into errors")
    pku_preference: Literal["better", "safer"] = opt("better", "PKU-SafeRLHF: which label defines chosen")
    pku_drop_both_unsafe: bool = opt(
        False, "PKU-SafeRLHF: drop pairs whose two responses are both labelled unsafe (counted as skipped)")
    out: str = opt("", "output folder (written atomically); checkpoints and logs go to OUT.run/ beside it")
    overwrite: bool = opt(False, "replace an earlier SFT policy at `out` and its run folder OUT.run/")
    resume: bool = opt(False, "continue the run in OUT.run/ from its newest checkpoint")
    limit: int | None = opt(None, "use only the first N usable rows", ge=1)
    response_field: Literal["auto", "response", "chosen"] = opt(
        "auto", "training target: response | chosen (preference rows) | auto (response if the rows have it)"
    )
    trust_remote_code: bool = opt(False, "allow custom model code from the model folder / hub")
    dtype: Dtype = opt("float32", DTYPE_HELP)
    train: TrainOptions = opt(TrainOptions(), "optimisation options")
    template: TemplateConfig = opt(TemplateConfig(), "prompt layout (the rollout engine uses the same one)")

    def check(self) -> None:
        from .data import adapters

        formats = ("auto", *adapters.SFT_ADAPTERS, *adapters.ADAPTERS)
        if self.data_format not in formats:
            import difflib

            hint = difflib.get_close_matches(self.data_format, formats, n=1)
            raise ConfigError(
                f"data_format must be auto or one of the accepted formats, not {self.data_format!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "") + f": {adapters.sft_formats_text()}"
            )
        check_columns_option(self.columns)
        check_resume_option(self)
        check_precision(self.dtype, {"the policy": not self.train.lora.enabled}, self.train.bf16)
        if self.train.trainer_args:
            from .training import check_trainer_args

            check_trainer_args(self.train.trainer_args, "SFTConfig", self.train)


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
    target is ``record.response`` (``record.chosen`` for a :class:`PreferenceRecord`). A
    :class:`TextRecord` is language modelling: its tokens (with the tokenizer's special tokens,
    no template) plus EOS, all with a loss; an over-long text is cut from the right.
    Over-long examples follow :func:`fit_to_length`: ``truncate`` cuts the prompt from the
    left (and the response from the right only when it alone leaves too little room),
    ``skip`` drops them; both are counted. Raises when nothing is left.
    """
    style = resolve_style(template, tokenizer)
    stats = SFTStats(records=len(records))
    examples = []
    for rec in records:
        if isinstance(rec, TextRecord):
            prompt, response = [], encode_text(rec.text, tokenizer, "plain") + encode_response("", tokenizer)
        else:
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


def _resolve(cfg: SFTRunConfig) -> tuple[str, str]:
    """``(field, format)``: ``response`` for an SFT format (the row's own target) or ``chosen``
    for a preference format, and the format (``auto`` read from the first row)."""
    from .data import adapters
    from .data.loading import first_row, unknown_format_error

    field, fmt = cfg.response_field, cfg.data_format
    if fmt == "auto":
        row_no, row = first_row(cfg.data, cfg.split, cfg.subset, cfg.columns)
        sft_fmt, pref_fmt = adapters.detect_sft_format(row), adapters.detect_format(row)
        fmt = {"response": sft_fmt, "chosen": pref_fmt}.get(field, sft_fmt or pref_fmt)
        if fmt is None:
            raise unknown_format_error(cfg.data, row_no, row, cfg.columns)
    if field == "response" and fmt in adapters.ADAPTERS:
        raise ConfigError(f"response_field=response reads SFT rows ({', '.join(adapters.SFT_ADAPTERS)}), "
                          f"not data_format={fmt}")
    if field == "chosen" and fmt in adapters.SFT_ADAPTERS:
        raise ConfigError(f"response_field=chosen needs preference rows, not data_format={fmt}")
    return ("chosen" if fmt in adapters.ADAPTERS else "response"), fmt


def resolve_response_field(cfg: SFTRunConfig) -> str:
    """``response`` (an SFT format: the row's own target) or ``chosen`` (a preference format)."""
    return _resolve(cfg)[0]


def load_sft_records(cfg: SFTRunConfig):
    """``(records, report, field, format)``: the training records, where their targets come from
    (``response`` or ``chosen``) and the data format (see the module docstring)."""
    from .data.loading import load_sft

    field, fmt = _resolve(cfg)
    records, report, fmt = load_sft(
        cfg.data, format=fmt, split=cfg.split, subset=cfg.subset, strict=cfg.strict_data, columns=cfg.columns,
        pku_preference=cfg.pku_preference, pku_drop_both_unsafe=cfg.pku_drop_both_unsafe, limit=cfg.limit)
    return records, report, field, fmt


def _check(cfg: SFTRunConfig):
    """Required options, the output folder and the run folder (``--resume``: the checkpoint's
    options), before any work; returns the run (train_run.SupervisedRun)."""
    from .train_run import open_run

    for name in ("model", "data", "out"):
        if not getattr(cfg, name):
            raise ConfigError(f"--{name} is required")
    check_output_dir(cfg.out, "sft", cfg.overwrite or cfg.resume, inputs=[cfg.data, cfg.model])
    return open_run(cfg, "sft")


def build_sft_trainer(cfg: SFTRunConfig, records, tokenizer, out_dir: Path, dtype: str | None = None):
    """TRL's SFTTrainer on our own tokenisation (loss on ``R(y)`` only); returns ``(trainer, stats)``.

    ``dtype``: the resolved storage dtype (default: resolved from ``cfg`` here)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from .models.loading import ensure_pad_token, load_causal_lm
    from .models.lora import apply_lora

    opts, lora = cfg.train, cfg.train.lora
    set_seed(opts.seed)  # LoRA adapters are initialised at random before the Trainer seeds itself
    dtype = dtype or resolve_stage_dtype(cfg, "the policy")
    model = load_causal_lm(cfg.model, gguf_file=cfg.gguf_file, trust_remote_code=cfg.trust_remote_code, dtype=dtype)
    ensure_pad_token(tokenizer, model)
    examples, stats = build_sft_examples(records, tokenizer, cfg.template, opts.max_length, opts.truncation)
    if lora.enabled:
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    args = SFTConfig(**trainer_kwargs(opts, out_dir, dtype), completion_only_loss=True, dataset_num_proc=None)
    rows = [{**e, "length": len(e["input_ids"])} for e in examples]  # for group_by_length
    with no_dataset_bars():
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
    return trainer, stats


def train_sft(cfg: SFTRunConfig) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data`` (loss on response tokens) and write it to ``cfg.out``."""
    run = _check(cfg)
    dtype = resolve_stage_dtype(cfg, "the policy")
    from .data.adapters import SFT_LOSS_ON
    from .models.loading import load_tokenizer

    records, report, field, fmt = load_sft_records(cfg)
    log.log(logging.WARNING if report.skipped else logging.INFO, "%s; loss on: %s", report.summary(),
            SFT_LOSS_ON.get(fmt, field))
    tokenizer = load_tokenizer(cfg.model, gguf_file=cfg.gguf_file, trust_remote_code=cfg.trust_remote_code)
    out = Path(cfg.out)

    def stop_where_sft_put_eos(model):
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tokenizer.pad_token_id
            if gen.eos_token_id is None:
                gen.eos_token_id = tokenizer.eos_token_id

    trainer, stats = build_sft_trainer(cfg, records, tokenizer, run.dir, dtype)
    with shared_output_dir(out, replace=cfg.overwrite or cfg.resume) as tmp:  # published by process 0 only
        meta = train_and_save(trainer, stats, cfg.train, tokenizer, tmp, report, cfg.data, stop_where_sft_put_eos,
                              desc="sft", run=run, dtype=dtype)
        if trainer.args.process_index == 0:
            atomic_write_json(tmp / SFT_META_FILE, {
                "kind": "sft",
                "template": to_dict(cfg.template),
                "style": resolve_style(cfg.template, tokenizer),
                "response_field": field,
                "sft_format": fmt,
                "loss_on": SFT_LOSS_ON.get(fmt, field),
                "base_model": cfg.model,
                **meta,
            })
    log.info("wrote SFT policy to %s", out)
    return out
