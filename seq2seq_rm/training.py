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
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import TrainOptions
from .errors import ConfigError
from .io import is_terminal

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

    extra = dict(opts.trainer_args)  # checked by check_trainer_args: none of the keys below but use_cpu
    deepspeed = "deepspeed" in extra
    if deepspeed and _cpu_deepspeed_launch():
        extra["accelerator_config"] = {**(extra.get("accelerator_config") or {}), "use_configured_state": True}
    return dict(
        output_dir=str(out_dir),
        # transformers refuses bf16 without a bf16 GPU unless told the run is on the CPU (where bf16
        # autocast works); without this, train.bf16=true stopped with a ValueError on CPU machines.
        # trainer_args.use_cpu=true (gloo data parallel on CPU) is honoured either way. Not under
        # DeepSpeed: use_cpu=true makes the Trainer drop DeepSpeed without a word.
        use_cpu=bool(extra.pop("use_cpu", False)) or (opts.bf16 and not torch.cuda.is_available() and not deepspeed),
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
        # checkpoints: the Trainer writes them into OUT.run/, train_run.RunCallback publishes and rotates them
        save_strategy="steps" if opts.save_steps else "no",
        **({"save_steps": opts.save_steps} if opts.save_steps else {}),
        save_total_limit=None,
        **_checkpointing_args(opts.gradient_checkpointing),
        report_to=report_to_list(opts.report_to),
        max_length=None,  # we truncate ourselves, by an explicit policy, before the trainer sees data
        dataloader_num_workers=0,
        # similar lengths in one batch: less padding (transformers 5 names it a sampling strategy)
        train_sampling_strategy="group_by_length" if opts.group_by_length else "random",
        length_column_name="length",
        disable_tqdm=True,  # TrainProgress is the one progress display (see the module docstring)
        **extra,
    )


def _cpu_deepspeed_launch() -> bool:
    """DeepSpeed in several processes on a machine without CUDA (DeepSpeed's CPU accelerator):
    transformers' TrainingArguments gives accelerate no process-group backend for DeepSpeed, and
    accelerate picks none without a GPU, so every process would train alone, each with a world
    of one (the launched-vs-seen check in train_run.train_in_run would then stop the run). Set up
    accelerate's shared state with gloo first, once per process; the TrainingArguments then use it
    (``accelerator_config.use_configured_state``). True when that was done (or had been)."""
    import torch

    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    from accelerate import PartialState

    if not PartialState._shared_state:  # noqa: SLF001 - accelerate's documented singleton check
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
    return True


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
    MAX_LINES = 40

    def __init__(self, desc: str = "training", stream=None, tty: bool | None = None):
        self.desc, self._stream, self._tty = desc, stream, tty
        self.bar = None
        self.step = 0
        self.every = 1  # without a bar: print every `every`-th log event (TensorBoard keeps them all)
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
        tty = self._tty if self._tty is not None else is_terminal(stream)
        if tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", file=stream, dynamic_ncols=True,
                            leave=True)
        else:
            # A pipe or a file gets at most ~MAX_LINES progress lines, however long the run.
            self.every = max(1, -(-state.max_steps // (args.logging_steps * self.MAX_LINES)))
            log.info("%s: %d optimisation steps, a log line every %d", self.desc, state.max_steps,
                     args.logging_steps * self.every)

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
        elif state.global_step % (args.logging_steps * self.every) == 0 or state.global_step == state.max_steps:
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


def run_trainer(trainer, desc: str = "training", run=None):
    """``trainer.train()`` with one progress display, log lines printed above the bar, never on it.

    ``run`` (a ``train_run.SupervisedRun``): train inside its run folder (atomic checkpoints,
    ``--resume`` from its checkpoint, Ctrl-C saves and stops)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    use_progress(trainer, desc)
    with logging_redirect_tqdm(loggers=_console_loggers()):
        if run is None:
            return trainer.train()
        from .train_run import check_examples, train_in_run

        check_examples(run, trainer.train_dataset)
        return train_in_run(trainer, run, lambda resume: trainer.train(resume_from_checkpoint=resume))


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
                   prepare_model=None, desc: str = "training", run=None, dtype: str = "float32") -> dict:
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
    zero3 = _zero3(trainer)
    if zero3 and opts.lora.enabled:  # before any training: merging needs whole weights we never gather
        raise ConfigError("LoRA under DeepSpeed ZeRO-3 is not supported by the supervised stages (the adapters "
                          "would have to be merged into partitioned weights); use ZeRO-2, or train without LoRA")
    result = run_trainer(trainer, desc, run)
    model = merge_lora(trainer.model) if opts.lora.enabled else trainer.model
    if prepare_model is not None:
        prepare_model(model)
    main = trainer.args.process_index == 0
    with quiet_progress():
        if zero3:  # collective: gathers the shards (stage3_gather_16bit_weights_on_model_save) for process 0
            trainer.save_model(str(out_dir))
        elif main:
            model.save_pretrained(out_dir)  # safetensors: the only format transformers 5 writes
    if main:
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
        **({"run": str(run.dir), "resumed_from": str(run.resume_from) if run.resume_from else None} if run else {}),
    }


# ------------------------------------------------------------------ report_to and trainer_args
REPORT_TO = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",), "none": ()}


def _zero3(trainer) -> bool:
    """Whether the Trainer runs DeepSpeed ZeRO-3 (its weights are partitioned over the processes)."""
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    plugin = trainer.accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def report_to_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def check_report_to(value) -> None:
    """``report_to``: known names, ``none`` alone, each chosen integration installed (checked with
    find_spec: nothing is imported until the Trainer starts). Errors name the option relative to
    its group (the config loader adds ``train.``)."""
    import importlib.util

    names = report_to_list(value)
    for name in names:
        if name not in REPORT_TO:
            import difflib

            hint = difflib.get_close_matches(str(name), list(REPORT_TO), n=1)
            raise ConfigError(f"report_to: {name!r} is not one of {', '.join(REPORT_TO)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        modules = REPORT_TO[name]
        if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ConfigError(f"report_to={name} needs the {modules[0]} package, which is not installed here: "
                              f"pip install {modules[0]} (or choose another of {', '.join(REPORT_TO)})")
    if not names or ("none" in names and len(names) > 1):
        raise ConfigError(f"report_to: give none alone, or one or more of tensorboard, wandb, trackio; not {value!r}")


_NO_EVAL = "the supervised stages train without an evaluation set; evaluate the output with `rm eval` or `eval`"
_OWN_DATA = ("the toolkit tokenises the data itself (layout rule, length policy); use the data, columns, template "
             "and train.* options")
# TrainingArguments / TRL config fields the toolkit sets itself, and what to use instead.
OWNED_TRAINER_ARGS = {
    "output_dir": "--out (checkpoints and logs go to OUT.run/ beside it)",
    "num_train_epochs": "train.epochs", "learning_rate": "train.lr", "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum", "weight_decay": "train.weight_decay",
    "warmup_steps": "train.warmup_ratio", "lr_scheduler_type": "train.scheduler", "bf16": "train.bf16",
    "seed": "train.seed", "data_seed": "train.seed", "logging_steps": "train.logging_steps",
    "save_strategy": "train.save_steps (0: no periodic checkpoints)", "save_steps": "train.save_steps",
    "save_total_limit": "train.save_total_limit", "report_to": "train.report_to",
    "resume_from_checkpoint": "--resume (resume=true)", "max_length": "train.max_length",
    "truncation_mode": "train.truncation", "train_sampling_strategy": "train.group_by_length",
    "length_column_name": "train.group_by_length", "gradient_checkpointing": "train.gradient_checkpointing",
    "trust_remote_code": "trust_remote_code", "model_init_kwargs": "the model options (the toolkit loads the model)",
    "disable_tqdm": "nothing: the toolkit shows one progress display of its own",
    "save_only_model": "nothing: --resume needs the optimizer, scheduler and RNG state in every checkpoint",
    "save_on_each_node": "nothing: process 0 publishes checkpoints into OUT.run/ (on a shared file system)",
    "push_to_hub": "nothing: upload the finished output folder yourself (e.g. `hf upload`)",
    "remove_unused_columns": f"nothing: {_OWN_DATA}",
    **{k: f"nothing: {_OWN_DATA}" for k in (
        "completion_only_loss", "assistant_only_loss", "dataset_text_field", "dataset_kwargs", "dataset_num_proc",
        "eos_token", "pad_token", "chat_template_path", "shuffle_dataset", "packing", "packing_strategy",
        "padding_free", "eval_packing")},
    **{k: f"nothing: {_NO_EVAL}" for k in (
        "eval_strategy", "eval_steps", "do_eval", "do_predict", "do_train", "per_device_eval_batch_size",
        "eval_accumulation_steps", "eval_delay", "eval_do_concat_batches", "eval_on_start", "eval_use_gather_object",
        "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "prediction_loss_only",
        "batch_eval_metrics", "include_for_metrics", "fp16_full_eval", "bf16_full_eval")},
    "local_rank": "nothing: the launcher (torchrun, accelerate launch) sets it",
}


def _trl_config(name: str):
    import trl

    return getattr(trl, name)


def check_trainer_args(args: dict, config_name: str, opts: TrainOptions | None = None, where: str = "train.") -> None:
    """``trainer_args`` of the options group ``where`` for TRL's ``config_name`` (``SFTConfig`` /
    ``RewardConfig``): refuse keys the toolkit sets itself (naming the option to use), unknown keys
    (with close matches), DeepSpeed when it is not installed, and bad values: the TRL config is
    built with them, as the stage will build it, so what it refuses stops here, before any work."""
    import dataclasses
    import difflib
    import importlib.util

    name = f"{where}trainer_args"
    for key in args:
        if key in OWNED_TRAINER_ARGS or key.startswith("hub_"):
            instead = OWNED_TRAINER_ARGS.get(key, OWNED_TRAINER_ARGS["push_to_hub"]).replace("train.", where)
            if instead.startswith("nothing: "):
                raise ConfigError(f"{name}.{key} is not accepted: {instead.removeprefix('nothing: ')}")
            raise ConfigError(f"{name}.{key} is set by seq2seq-rm itself; use {instead}")
    if "deepspeed" in args and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{name}.deepspeed needs the deepspeed package, which is not installed here: "
                          "pip install --no-build-isolation deepspeed (or drop the option)")
    if "deepspeed" in args and args.get("use_cpu"):
        raise ConfigError(f"{name}.deepspeed with {name}.use_cpu=true: the HF Trainer then drops DeepSpeed without "
                          "a word and trains with plain data parallelism; leave use_cpu out (DeepSpeed runs on the "
                          "CPU by itself when there is no GPU)")
    if not args:
        return
    cls = _trl_config(config_name)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in args:
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=3)
            raise ConfigError(f"unknown option {name}.{key}: not a field of TRL's {config_name}"
                              + (f"; did you mean {', '.join(hint)}?" if hint else ""))
    try:
        cls(**trainer_kwargs(opts or TrainOptions(), Path("OUT.run")) | args)
    except Exception as e:  # noqa: BLE001 - whatever the TrainingArguments checks raise
        raise ConfigError(f"{name}: TRL's {config_name} refuses them: {type(e).__name__}: {e}") from None
