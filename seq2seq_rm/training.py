"""Pieces shared by the supervised stages (SFT, seq2seq RM, scalar RM), which all run on TRL trainers."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import TrainOptions


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
