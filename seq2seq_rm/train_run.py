"""The run folder of a supervised stage (``sft``, ``rm train``): checkpoints, ``--resume``, Ctrl-C.

Layout, beside the output folder ``OUT`` (as for ``ppo``)::

    OUT.run/
      config.json                  the options in force (rewritten by a resumed run)
      runs/DATE_HOST/              TensorBoard logs, one subfolder per launch
      checkpoints/checkpoint-N/    published checkpoints (the HF Trainer's own format)
      checkpoint-N/                only while the Trainer is writing one (never resumed from)

The HF Trainer writes ``checkpoint-N`` straight into its ``output_dir`` (``OUT.run/``), file by
file (``Trainer._save_checkpoint``): a save killed half-way would look like a checkpoint to
``get_last_checkpoint``. So :class:`RunCallback` publishes each one only after the Trainer has
finished it (``on_save`` runs after ``_save_checkpoint`` returns): it writes our marker
``checkpoint.json`` (step, options, fingerprint of the training examples) into it and renames it
into ``checkpoints/`` in one ``os.replace``. Only ``checkpoints/checkpoint-N`` folders are ever
resumed from; a ``checkpoint-N`` left at the top of the run folder is a killed save and is removed
at start-up. The Trainer's own rotation is off (``save_total_limit=None`` passed to it): older
published checkpoints are deleted only after a newer one is published, so a kill at any moment
leaves at least the previous good checkpoint.

``--resume`` continues from the newest published checkpoint with ``trainer.train(
resume_from_checkpoint=...)`` (weights, optimizer, scheduler, RNG, data position): N steps straight
and k steps + resume give the same weights (tested). A resumed run keeps the checkpoint's options:
only those in :data:`RESUME_FREE` may change; any other difference (a different ``model`` or
``data`` too) stops at start-up with the list of differences, and so do training examples whose
fingerprint differs from the checkpoint's (same path, changed file or tokenizer).

Ctrl-C (single process) finishes the current optimisation step, saves a checkpoint and stops
without writing ``OUT``; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from .config import flatten_options, to_dict
from .errors import ConfigError, Seq2SeqRMError
from .io import _tag, atomic_dir, atomic_write_json, clean_stale

log = logging.getLogger(__name__)

MARKER = "checkpoint.json"  # written last, before publishing: its presence means "complete"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# Options a resumed run may change: bookkeeping that does not change what is computed.
# (``out``: the run folder is found from it, so a moved output and run folder resume where they are.)
RESUME_FREE = ("resume", "overwrite", "out", "train.save_steps", "train.save_total_limit", "train.logging_steps",
               "train.report_to")
# What a complete checkpoint of the HF Trainer holds (besides the weights).
_NEEDED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def run_dir_of(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.parent / (out.name + ".run")


def _step(path: Path) -> int:
    return int(_CKPT.match(path.name)[1])


def published_checkpoints(run_dir: Path) -> list[Path]:
    """Published checkpoints (``checkpoints/checkpoint-N`` holding the marker), oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CKPT.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=_step)




def _damaged(path: Path, why: str) -> Seq2SeqRMError:
    return Seq2SeqRMError(
        f"checkpoint {path} is damaged and cannot be resumed ({why}); move that folder away to resume from the "
        "one before it, or start afresh with --overwrite")


def _read_marker(path: Path) -> dict:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _damaged(path, f"{MARKER}: {e}") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("config"), dict):
        raise _damaged(path, f"{MARKER} holds no options")
    missing = [n for n in _NEEDED if not (path / n).is_file()]
    if not any((path / n).is_file() for n in _WEIGHTS):
        missing.append("model weights")
    if missing:
        raise _damaged(path, f"missing {', '.join(missing)}")
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _damaged(path, f"trainer_state.json: {e}") from None
    return marker


@dataclass
class SupervisedRun:
    """One supervised stage's run folder and what ``--resume`` found in it (see the module doc)."""

    dir: Path
    kind: str  # "sft" | "reward-model"
    config: dict  # to_dict of the stage's options
    save_total_limit: int
    resume_from: Path | None = None
    resume_marker: dict | None = None
    fingerprint: str | None = None
    replace_earlier: bool = False  # --overwrite of an earlier run of ours (checked by open_run)

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"


def open_run(cfg, kind: str) -> SupervisedRun:
    """Check ``cfg.out``'s run folder against ``cfg.resume`` / ``cfg.overwrite`` and, on resume,
    the newest checkpoint's options against ``cfg``: every refusal happens here, before any model
    or data is loaded. Nothing is written yet (:func:`start_run` does that)."""
    run = SupervisedRun(run_dir_of(cfg.out), kind, to_dict(cfg), cfg.train.save_total_limit)
    d = run.dir
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} (the run folder of --out {cfg.out}) is a file; give another --out")
    busy = d.is_dir() and any(d.iterdir())
    if busy and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"{d} holds an earlier run (checkpoints, logs); pass --resume to continue it, "
                          "--overwrite to start afresh and replace it, or give another --out")
    if busy and not (d / "config.json").is_file():
        raise ConfigError(f"{d} is not a seq2seq-rm run folder (no config.json); not touching it: give another --out")
    if not cfg.resume:
        run.replace_earlier = busy
        return run
    clean_stale(run.checkpoints)
    done = published_checkpoints(d)
    if not done:
        log.warning("--resume but %s holds no checkpoint: starting from step 0", run.checkpoints)
        return run
    path = done[-1]
    marker = _read_marker(path)
    if marker.get("kind") != kind:
        raise ConfigError(f"--resume: {path} is a checkpoint of a {marker.get('kind')} run, not of {kind}")
    _compare(marker["config"], run.config, path)
    run.resume_from, run.resume_marker = path, marker
    return run


def _compare(saved: dict, now: dict, path: Path) -> None:
    """A ConfigError listing every option that differs from the checkpoint's, except RESUME_FREE."""
    old, new = flatten_options(saved), flatten_options(now)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUME_FREE)
    if diff:
        listed = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in diff)
        raise ConfigError(
            f"--resume with options that differ from checkpoint {path}: {listed}. A resumed run keeps them (only "
            f"{', '.join(RESUME_FREE[3:])} may change); restore them, or start afresh with --overwrite")


def examples_fingerprint(dataset, columns=("input_ids", "completion_mask", "chosen_ids", "rejected_ids")) -> str:
    """sha256 of the training examples' token ids (a ``datasets.Dataset``): equal iff the same
    examples in the same order, whatever path they were read from."""
    import pyarrow.compute as pc

    h = hashlib.sha256()
    table = dataset.with_format("arrow")
    for name in columns:
        if name in dataset.column_names:
            col = table[name]  # a pyarrow list column (honours any indices mapping); no Python lists
            h.update(name.encode())
            h.update(pc.list_value_length(col).to_numpy().astype("int64").tobytes())
            h.update(pc.list_flatten(col).to_numpy().astype("int64").tobytes())
    return h.hexdigest()


def check_examples(run: SupervisedRun, dataset) -> None:
    """Record the examples' fingerprint; on resume, refuse examples that differ from the checkpoint's."""
    run.fingerprint = examples_fingerprint(dataset)
    if run.resume_marker is not None and run.resume_marker.get("examples_sha256") != run.fingerprint:
        raise ConfigError(
            f"--resume: the training examples differ from those of checkpoint {run.resume_from} (the data file "
            "or the tokenizer changed, though the options are the same); restore them, or start afresh with "
            "--overwrite")


def start_run(run: SupervisedRun, is_main: bool = True) -> None:
    """Before the first step: replace an earlier run (``--overwrite``, checked by :func:`open_run`),
    remove killed saves, record the options in force."""
    if not is_main:
        return
    if run.replace_earlier and run.dir.is_dir():
        shutil.rmtree(run.dir)  # open_run allowed it: an earlier run of ours, with --overwrite
        log.info("removed the earlier run in %s (--overwrite)", run.dir)
    run.dir.mkdir(parents=True, exist_ok=True)
    for partial in run.dir.glob("checkpoint-*"):  # unpublished: a save that was killed
        if partial.is_dir() and _CKPT.match(partial.name):
            shutil.rmtree(partial, ignore_errors=True)
            log.warning("removed %s: a checkpoint whose save did not finish", partial)
    atomic_write_json(run.dir / "config.json", run.config)


def _barrier(world_size: int) -> None:
    import torch.distributed as dist

    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


class RunCallback:
    """Publishes each checkpoint atomically, rotates old ones, and turns Ctrl-C into save-and-stop.

    A ``transformers.TrainerCallback`` by duck typing (events it does not handle are no-ops).
    """

    def __init__(self, run: SupervisedRun):
        self.run = run
        self.interrupted = False
        self.started = False  # on_train_begin seen: a resumed checkpoint was loaded

    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        _barrier(args.world_size)  # every process has written its part (rng_state_K.pth) of checkpoint-N
        if state.is_world_process_zero:
            self.publish(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)
        _barrier(args.world_size)

    def publish(self, written: Path, step: int) -> Path:
        run = self.run
        atomic_write_json(written / MARKER, {"kind": run.kind, "step": step, "config": run.config,
                                             "examples_sha256": run.fingerprint})
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        target = run.checkpoints / written.name
        old = None
        if target.exists():  # the same step saved again (a resumed run that had already finished)
            old = run.checkpoints / f".{target.name}.old-{_tag()}"
            os.replace(target, old)
        os.replace(written, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        done = published_checkpoints(run.dir)
        for stale in done[: max(len(done) - run.save_total_limit, 0)]:
            shutil.rmtree(stale, ignore_errors=True)
        log.info("checkpoint: %s", target)
        return target

    # ------------------------------------------------------------------ Ctrl-C
    def _on_sigint(self, signum, frame):
        if self.interrupted:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("Ctrl-C: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)")
        self.interrupted = True

    def sigint_handler(self, world_size: int):
        """Install the save-and-stop handler (one process, main thread only: with several processes
        the ranks would see the signal at different steps); returns the previous handler or None."""
        if world_size > 1 or threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGINT, self._on_sigint)


def train_in_run(trainer, run: SupervisedRun, train):
    """``train(resume_from)`` (the caller's ``trainer.train`` with its display) inside ``run``:
    publishing callback, Ctrl-C handling, damaged-checkpoint message. Raises KeyboardInterrupt after
    a Ctrl-C save, so the caller writes no final output."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and trainer.args.world_size != launched:
        # transformers sets up no distributed run on a machine without an accelerator unless told to
        # use the CPU: every process would train alone and write the same folders
        raise ConfigError(f"{launched} processes were launched but the trainer sees {trainer.args.world_size}: "
                          "on CPU pass train.trainer_args.use_cpu=true (gloo data parallel)")
    cb = RunCallback(run)
    trainer.add_callback(cb)
    start_run(run, trainer.args.process_index == 0)
    _barrier(trainer.args.world_size)
    previous = cb.sigint_handler(trainer.args.world_size)
    try:
        from .models.loading import quiet_progress

        resume = str(run.resume_from) if run.resume_from else None
        try:
            with quiet_progress():  # no "Writing model shards" bar per checkpoint under the training bar
                result = train(resume)
        except (KeyboardInterrupt, Seq2SeqRMError, ConfigError):
            raise
        except Exception as e:
            if resume and not cb.started:  # failed while loading the checkpoint's state
                raise _damaged(run.resume_from, f"{type(e).__name__}: {e}") from e
            raise
        if cb.interrupted and trainer.state.global_step < trainer.state.max_steps:
            log.warning("interrupted: checkpoint saved at step %d in %s; rerun with --resume to continue",
                        trainer.state.global_step, run.checkpoints)
            raise KeyboardInterrupt
        return result
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def shared_output_dir(out: Path, replace: bool):
    """``io.atomic_dir`` for a run in one or several processes: process 0 owns the temporary folder
    and publishes it (one rename); the others are told its path (every process must take part in
    saving a ZeRO-3 model, and nobody else may rename). The body runs on every process; it must
    write only from process 0, except collective saves. Call after the trainer is built (that sets
    up the process group)."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        with atomic_dir(out, replace=replace) as tmp:
            yield tmp
        return
    from accelerate.utils import broadcast_object_list

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(out, replace=replace)) if state.is_main_process else None
        tmp = Path(broadcast_object_list([str(tmp) if tmp else None], from_process=0)[0])
        yield tmp
        state.wait_for_everyone()  # all have written before process 0 publishes
