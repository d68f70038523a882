"""Pieces shared by the supervised stages (SFT, seq2seq RM, scalar RM), which all run on TRL trainers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .config import TrainOptions


@dataclass
class ExampleStats:
    """What building a reward model's training examples did with the preference pairs."""

    pairs: int = 0
    correction: int = 0  # seq2seq: Correction Mapping examples
    identity: int = 0  # seq2seq: Identity Mapping examples
    truncated: int = 0
    skipped_too_long: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def trainer_kwargs(opts: TrainOptions, out_dir: Path) -> dict:
    """TrainingArguments shared by every supervised stage (TRL SFTConfig / RewardConfig)."""
    return dict(
        output_dir=str(out_dir),
        num_train_epochs=opts.epochs,
        learning_rate=opts.lr,
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        weight_decay=opts.weight_decay,
        warmup_steps=opts.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        lr_scheduler_type=opts.scheduler,
        bf16=opts.bf16,
        seed=opts.seed,
        data_seed=opts.seed,
        logging_steps=opts.logging_steps,
        save_strategy="no",
        gradient_checkpointing=False,  # TRL turns it on by default; it only slows small models down
        report_to=["tensorboard"],
        max_length=None,  # we truncate ourselves, by an explicit policy, before the trainer sees data
        dataloader_num_workers=0,
        disable_tqdm=not sys.stderr.isatty(),  # progress bars on a terminal, plain logs in CI
    )


def train_and_save(trainer, stats, opts: TrainOptions, tokenizer, out_dir: Path, report, source: str,
                   prepare_model=None) -> dict:
    """Run a TRL trainer, save model (LoRA merged) + tokenizer to ``out_dir``, and return the
    metadata every supervised stage records: data report, length-policy counts, loss curve."""
    import logging
    import time

    from .config import to_dict
    from .models.lora import merge_lora

    t0 = time.time()
    if stats.truncated or stats.skipped_too_long:
        logging.getLogger(__name__).warning(
            "length policy %s at max_length=%d: %d examples truncated, %d skipped",
            opts.truncation, opts.max_length, stats.truncated, stats.skipped_too_long,
        )
    result = trainer.train()
    model = merge_lora(trainer.model) if opts.lora.enabled else trainer.model
    if prepare_model is not None:
        prepare_model(model)
    model.save_pretrained(out_dir)  # safetensors: the only format transformers 5 writes
    tokenizer.save_pretrained(out_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "max_length": opts.max_length,
        "data": {"source": source, "format": report.format, "rows_read": report.rows_read,
                 "kept": report.kept, "skipped": report.skipped},
        "examples": stats.as_dict(),
        "train": to_dict(opts),
        "final_loss": history[-1]["loss"] if history else None,
        "loss_curve": [[h["step"], h["loss"]] for h in history],
        "train_loss": result.training_loss,
        "seconds": round(time.time() - t0, 1),
    }
