"""Bundled offline tasks: seeded generators of prompts and preference pairs.

``TASKS`` names the three tasks with oracles (safety, summarize, instruct); ``get_task``
returns one, ``export_split`` writes a split's files. ``sample`` is the tiny smoke set.
Default sizes per split (``DEFAULT_SIZES``): train 2000, test 400, ood 400 rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from .annotator import LENGTH_BIAS, NOISE, REFUSAL_BIAS, Annotator
from .base import DEFAULT_SIZES, SPLITS, Task, TaskExample, _jsonable

TASKS = ("safety", "summarize", "instruct")
EXPORT_FILES = ("preferences.jsonl", "prompts.jsonl", "sft.jsonl")


def get_task(name: str) -> Task:
    """The task called ``name`` (one of ``TASKS``)."""
    if name == "safety":
        from .safety import TASK
    elif name == "summarize":
        from .summarize import TASK
    elif name == "instruct":
        from .instruct import TASK
    else:
        from ..errors import ConfigError

        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASK


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in rows)


def export_split(task: str | Task, split: str, out_dir, n: int | None = None, seed: int = 0,
                 annotator: Annotator | None = None) -> dict[str, Path]:
    """Write ``preferences.jsonl`` (prompt, chosen, rejected, meta), ``prompts.jsonl``
    (prompt, task, split, kind, meta) and ``sft.jsonl`` (prompt, response) for one split,
    and ``task.json`` saying what they are.

    All three use the same ``n`` prompts (default ``DEFAULT_SIZES[split]``). Each file is
    written to a temporary file and renamed into place.
    """
    from seq2seq_rm.errors import ConfigError
    from seq2seq_rm.io import atomic_write_json, atomic_write_text
    from seq2seq_rm.outputs import META_FILES

    t = get_task(task) if isinstance(task, str) else task
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if n is not None and n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    n = DEFAULT_SIZES[split] if n is None else n
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "preferences.jsonl": _jsonl(t.preferences(split, n, seed, annotator)),
        "prompts.jsonl": _jsonl(t.prompt_rows(split, n, seed)),
        "sft.jsonl": _jsonl(t.sft_rows(split, n, seed)),
    }
    paths = {}
    for fname, text in contents.items():
        atomic_write_text(out / fname, text)
        paths[fname.removesuffix(".jsonl")] = out / fname
    atomic_write_json(out / META_FILES["task-export"], {"kind": "task-export", "task": t.name, "split": split,
                                                        "n": n, "seed": seed})
    return paths


__all__ = ["TASKS", "DEFAULT_SIZES", "SPLITS", "EXPORT_FILES", "Task", "TaskExample", "Annotator",
           "REFUSAL_BIAS", "LENGTH_BIAS", "NOISE", "get_task", "export_split"]
