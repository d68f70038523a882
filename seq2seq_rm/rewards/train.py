"""``seq2seq-rm rm train``: fit a seq2seq RM (sequence MLE) or the scalar Bradley-Terry baseline.

Both use TRL's supervised trainers on data we tokenise ourselves, so training and
extraction share one layout (data/templates.py): the seq2seq RM is SFT on
``{"input_ids", "completion_mask"}`` (loss on target tokens only), the scalar RM is
TRL's RewardTrainer on ``{"chosen_ids", "rejected_ids"}``. Both get the same records,
base model and optimisation options, so the baseline is never weakened.

The output folder is written atomically (temp folder, then rename): a failed or killed
run leaves nothing half-written at ``--out``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import RMTrainConfig, to_dict
from ..errors import ConfigError
from ..io import atomic_write_json
from ..outputs import check_output_dir
from ..train_run import shared_output_dir
from ..training import resolve_stage_dtype, train_and_save, trainer_kwargs
from .base import META_FILE

log = logging.getLogger(__name__)


def _check(cfg: RMTrainConfig):
    """Required options, the output folder and the run folder (``--resume``: the checkpoint's
    options), before any work; returns the run (train_run.SupervisedRun)."""
    from ..train_run import open_run

    for name in ("model", "data", "out"):
        if not getattr(cfg, name):
            raise ConfigError(f"--{name} is required")
    check_output_dir(cfg.out, "reward-model", cfg.overwrite or cfg.resume, inputs=[cfg.data, cfg.model])
    return open_run(cfg, "reward-model")


def build_trainer(cfg: RMTrainConfig, records, tokenizer, out_dir: Path, dtype: str | None = None):
    """The TRL trainer for ``cfg.kind`` on our own tokenisation; returns ``(trainer, example_stats)``.

    ``dtype``: the resolved storage dtype (default: resolved from ``cfg`` here)."""
    from datasets import Dataset
    from transformers import set_seed

    from ..models.loading import ensure_pad_token, load_causal_lm, load_sequence_classifier
    from ..models.lora import apply_lora

    opts, lora = cfg.train, cfg.train.lora
    # train.seed also fixes what is drawn before the Trainer seeds itself: the scalar head and LoRA
    # adapters are initialised at random (without this two runs differ, and so would a resumed one)
    set_seed(opts.seed)
    dtype = dtype or resolve_stage_dtype(cfg, f"the {cfg.kind} RM")
    if cfg.kind == "seq2seq":
        from trl import SFTConfig, SFTTrainer

        from .seq2seq import build_seq2seq_examples

        model = load_causal_lm(cfg.model, gguf_file=cfg.gguf_file, trust_remote_code=cfg.trust_remote_code,
                               dtype=dtype)
        ensure_pad_token(tokenizer, model)
        examples, stats = build_seq2seq_examples(
            records, tokenizer, cfg.template, cfg.mapping, opts.max_length, opts.truncation, opts.seed
        )
        dataset = Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": e["completion_mask"],
                                      "length": len(e["input_ids"])} for e in examples])
        if lora.enabled:
            model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
        args = SFTConfig(**trainer_kwargs(opts, out_dir, dtype), completion_only_loss=True, dataset_num_proc=None)
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer), stats

    from trl import RewardConfig, RewardTrainer

    from .scalar import build_pair_examples

    model = load_sequence_classifier(cfg.model, num_labels=1, trust_remote_code=cfg.trust_remote_code, dtype=dtype)
    ensure_pad_token(tokenizer, model)
    examples, stats = build_pair_examples(records, tokenizer, cfg.template, opts.max_length, opts.truncation)
    if lora.enabled:
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, task_type="SEQ_CLS")
    # remove_unused_columns=False keeps the "length" column for group_by_length (the preference
    # collator reads chosen_ids / rejected_ids only, so the extra column is harmless).
    args = RewardConfig(**trainer_kwargs(opts, out_dir, dtype), center_rewards_coefficient=None, remove_unused_columns=False)
    rows = [{**e, "length": max(len(e["chosen_ids"]), len(e["rejected_ids"]))} for e in examples]  # group_by_length
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return trainer, stats


def train_reward_model(cfg: RMTrainConfig) -> Path:
    """Train the RM described by ``cfg`` and write it to ``cfg.out``. Returns the folder."""
    run = _check(cfg)
    dtype = resolve_stage_dtype(cfg, f"the {cfg.kind} RM")
    from ..data.loading import load_preferences
    from ..models.loading import load_tokenizer
    records, report = load_preferences(
        cfg.data, format=cfg.data_format, split=cfg.split, subset=cfg.subset, strict=cfg.strict_data,
        pku_preference=cfg.pku_preference, limit=cfg.limit,
        pku_drop_both_unsafe=cfg.pku_drop_both_unsafe, columns=cfg.columns,
    )
    log.info(report.summary())
    tokenizer = load_tokenizer(cfg.model, gguf_file=cfg.gguf_file, trust_remote_code=cfg.trust_remote_code)
    out = Path(cfg.out)
    trainer, stats = build_trainer(cfg, records, tokenizer, run.dir, dtype)
    with shared_output_dir(out, replace=cfg.overwrite or cfg.resume) as tmp:  # published by process 0 only
        meta = train_and_save(trainer, stats, cfg.train, tokenizer, tmp, report, cfg.data, run=run, dtype=dtype)
        if trainer.args.process_index == 0:
            atomic_write_json(tmp / META_FILE, {
                "kind": cfg.kind,
                "template": to_dict(cfg.template),
                "extraction": to_dict(cfg.extraction),
                "mapping": to_dict(cfg.mapping) if cfg.kind == "seq2seq" else None,
                "base_model": cfg.model,
                **meta,
            })
    log.info("wrote %s reward model to %s", cfg.kind, out)
    return out
