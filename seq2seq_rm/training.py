"""Pieces shared by the supervised stages (SFT, seq2seq RM, scalar RM), which all run on TRL trainers.

What a person sees while they train: one progress display (:class:`TrainProgress`) in place of
the Trainer's console logging (``PrinterCallback`` prints raw ``{'loss': ...}`` dicts,
``ProgressCallback`` writes them under its bar). On a terminal it is one tqdm bar on stderr whose
postfix shows the loss and learning rate, and log lines are printed above the bar, never on it
(``logging_redirect_tqdm``); elsewhere (CI, a pipe, a file) there is no bar, only a log line every
``logging_steps`` steps. TensorBoard logging is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import TrainOptions

log = logging.getLogger(__name__)


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


def trainer_kwargs(opts: TrainOptions, out_dir: Path, dtype: str = "float32") -> dict:
    """TrainingArguments shared by every supervised stage (TRL SFTConfig / RewardConfig).

    ``dtype``: the resolved storage dtype of the model (``check_precision`` has refused what cannot
    train). float16 weights (LoRA on CUDA) train under float16 autocast with loss scaling
    (``fp16=True``: the Trainer's GradScaler), since float16 gradients underflow without it.
    """
    import torch

    return dict(
        output_dir=str(out_dir),
        # transformers refuses bf16 without a bf16 GPU unless told the run is on the CPU (where bf16
        # autocast works); without this, train.bf16=true stopped with a ValueError on CPU machines.
        use_cpu=opts.bf16 and not torch.cuda.is_available(),
        num_train_epochs=opts.epochs,
        learning_rate=opts.lr,
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        weight_decay=opts.weight_decay,
        warmup_steps=opts.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        lr_scheduler_type=opts.scheduler,
        bf16=opts.bf16,
        fp16=dtype == "float16",
        seed=opts.seed,
        data_seed=opts.seed,
        logging_steps=opts.logging_steps,
        save_strategy="no",
        **_checkpointing_args(opts.gradient_checkpointing),
        report_to=["tensorboard"],
        max_length=None,  # we truncate ourselves, by an explicit policy, before the trainer sees data
        dataloader_num_workers=0,
        # similar lengths in one batch: less padding (transformers 5 names it a sampling strategy)
        train_sampling_strategy="group_by_length" if opts.group_by_length else "random",
        length_column_name="length",
        disable_tqdm=True,  # TrainProgress is the one progress display (see the module docstring)
    )


def _checkpointing_args(enabled: bool) -> dict:
    """Activation checkpointing as TrainingArguments, always given explicitly (TRL's configs default it
    to True). transformers >= 5.23 names it ``activation_checkpointing`` (``gradient_checkpointing`` is a
    deprecated alias there); older 5.x only know ``gradient_checkpointing``. Non-reentrant, so a frozen
    LoRA base needs no input that requires grad."""
    from transformers import TrainingArguments

    name = ("activation_checkpointing" if "activation_checkpointing_kwargs" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def resolve_stage_dtype(cfg, role: str) -> str:
    """The storage dtype a supervised stage loads ``cfg.model`` in, by name, checked before any work.

    ``cfg``: an SFT or RM-training config (``model``, ``gguf_file``, ``dtype``, ``train``). ``auto``
    is resolved against the checkpoint here, and the precision rules (``check_precision``, already
    applied to explicit dtypes when the config was read) are applied to what it resolved to.
    """
    from .config import check_precision
    from .models.loading import dtype_name, resolve_dtype

    name = dtype_name(resolve_dtype(cfg.dtype, cfg.model, gguf_file=cfg.gguf_file,
                                    trust_remote_code=cfg.trust_remote_code))
    if cfg.dtype == "auto":
        check_precision(name, {role: not cfg.train.lora.enabled}, cfg.train.bf16,
                        where=f"dtype=auto resolved to {name} (the checkpoint's own dtype)")
        log.info("dtype=auto: loading %s in %s", cfg.model, name)
    return name


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _no_op(*args, **kwargs):
    return None


class TrainProgress:
    """A Trainer's one progress display: a tqdm bar with loss / lr on a terminal, else log lines.

    A ``transformers.TrainerCallback`` by duck typing (events it does not handle are no-ops), so
    importing this module does not import transformers. ``stream`` (default: ``sys.stderr`` when
    training starts) and ``tty`` (default: whether that stream is a terminal) are for tests.
    """

    SHOWN = (("loss", "loss", "{:.4g}"), ("learning_rate", "lr", "{:.2e}"), ("accuracy", "acc", "{:.3f}"),
             ("mean_token_accuracy", "tok_acc", "{:.3f}"))

    def __init__(self, desc: str = "training", stream=None, tty: bool | None = None):
        self.desc, self._stream, self._tty = desc, stream, tty
        self.bar = None
        self.step = 0
        self.summary: dict = {}

    def __getattr__(self, name: str):
        if name.startswith("on_"):  # on_init_end, on_epoch_begin, on_substep_end, ...
            return _no_op
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.step, self.summary = 0, {}
        if not state.is_world_process_zero:
            return
        stream = self._stream if self._stream is not None else sys.stderr
        tty = self._tty if self._tty is not None else _isatty(stream)
        if tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", file=stream, dynamic_ncols=True,
                            leave=True)
        else:
            log.info("%s: %d optimisation steps, a log line every %d", self.desc, state.max_steps, args.logging_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.step)
        self.step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" not in logs:
            self.summary.update(logs)  # the end-of-training metrics (train_loss, train_runtime, ...)
            return
        shown = {}
        for key, name, fmt in self.SHOWN:
            value = _number(logs.get(key))
            if value is not None:
                shown[name] = fmt.format(value)
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=True)
        else:
            epoch = _number(logs.get("epoch"))
            log.info("%s step %d/%d%s: %s", self.desc, state.global_step, state.max_steps,
                     f" (epoch {epoch:.2f})" if epoch is not None else "",
                     ", ".join(f"{k} {v}" for k, v in shown.items()))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if state.is_world_process_zero:
            loss, seconds = _number(self.summary.get("train_loss")), _number(self.summary.get("train_runtime"))
            log.info("%s: %d steps%s%s", self.desc, state.global_step,
                     f" in {seconds:.1f} s" if seconds is not None else "",
                     f", mean loss {loss:.4g}" if loss is not None else "")


# The Trainer's own console displays, replaced by TrainProgress.
_CONSOLE_CALLBACKS = ("PrinterCallback", "ProgressCallback", "NotebookProgressCallback")


def use_progress(trainer, desc: str = "training") -> TrainProgress:
    """Replace ``trainer``'s console logging by one :class:`TrainProgress` display; returns it."""
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb).__name__ in _CONSOLE_CALLBACKS:
            trainer.remove_callback(cb)
    progress = TrainProgress(desc)
    trainer.add_callback(progress)
    return progress


def _console_loggers() -> list[logging.Logger]:
    """The loggers that write to the terminal (ours, the root's if configured, transformers')."""
    names = ("", "seq2seq_rm", "transformers")
    return [lg for lg in map(logging.getLogger, names) if any(
        isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr)
        for h in lg.handlers)]


def run_trainer(trainer, desc: str = "training"):
    """``trainer.train()`` with one progress display, log lines printed above the bar, never on it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    use_progress(trainer, desc)
    with logging_redirect_tqdm(loggers=_console_loggers()):
        return trainer.train()


@contextlib.contextmanager
def no_dataset_bars():
    """No ``datasets`` progress bars inside (the trainers' "Building labels" / "Tokenizing" maps over
    data we tokenised ourselves)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    if was:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def train_and_save(trainer, stats, opts: TrainOptions, tokenizer, out_dir: Path, report, source: str,
                   prepare_model=None, desc: str = "training", dtype: str = "float32") -> dict:
    """Run a TRL trainer, save model (LoRA merged) + tokenizer to ``out_dir``, and return the
    metadata every supervised stage records: data report, length-policy counts, loss curve, and
    ``dtype``, the storage dtype the model was loaded and trained in, and ``saved_dtype``, that of
    the saved weights (float32 when LoRA adapters were merged into a half-precision base)."""
    import time

    from .config import to_dict
    from .models.loading import quiet_progress
    from .models.lora import merge_lora

    t0 = time.time()
    if stats.truncated or stats.skipped_too_long:
        log.warning(
            "length policy %s at max_length=%d: %d examples truncated, %d skipped",
            opts.truncation, opts.max_length, stats.truncated, stats.skipped_too_long,
        )
    result = run_trainer(trainer, desc)
    model = merge_lora(trainer.model) if opts.lora.enabled else trainer.model
    if prepare_model is not None:
        prepare_model(model)
    with quiet_progress():
        model.save_pretrained(out_dir)  # safetensors: the only format transformers 5 writes
    tokenizer.save_pretrained(out_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    data = report.as_dict() if hasattr(report, "as_dict") else {
        "format": report.format, "rows_read": report.rows_read, "kept": report.kept, "skipped": report.skipped}
    return {
        "max_length": opts.max_length,
        "dtype": dtype,
        "saved_dtype": str(model.dtype).removeprefix("torch."),  # float32 after a LoRA merge (merge_lora)
        "data": {**data, "source": source},
        "examples": stats.as_dict(),
        "train": to_dict(opts),
        "final_loss": history[-1]["loss"] if history else None,
        "loss_curve": [[h["step"], h["loss"]] for h in history],
        "train_loss": result.training_loss,
        "seconds": round(time.time() - t0, 1),
    }
