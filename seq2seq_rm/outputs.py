"""What seq2seq-rm writes, how to recognise it, and the rule for where an output may go.

Each command that writes a folder records what it is in a metadata file inside it:

==============  ======================  =====================================
kind            metadata file           written by
==============  ======================  =====================================
tiny-model      ``tiny_model.json``     ``tiny-model``
sft             ``sft.json``            ``sft``
reward-model    ``seq2seq_rm.json``     ``rm train`` (both RM kinds)
ppo-policy      ``policy.json``         ``ppo`` (its run folder is ``OUT.run/``)
experiment      ``experiment.json``     ``demo``, ``experiment``
eval            ``eval.json``           ``eval``
task-export     ``task.json``           ``tasks export``
==============  ======================  =====================================

The rule (:func:`check_output_dir`, checked before any work starts): an output folder may be
missing or empty; an earlier output of the same kind is replaced only with ``--overwrite``;
anything else (a file, a folder holding other things, the current folder, a folder holding
the command's own inputs) is refused. File outputs (:func:`check_output_file`) replace an
existing file only with ``--overwrite``. Temporaries left by killed runs are cleaned first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ConfigError
from .io import clean_stale

META_FILES = {
    "tiny-model": "tiny_model.json",
    "sft": "sft.json",
    "reward-model": "seq2seq_rm.json",
    "ppo-policy": "policy.json",
    "experiment": "experiment.json",
    "eval": "eval.json",
    "task-export": "task.json",
}
# The values of "kind" each metadata file may hold (an RM folder says which RM it is).
_KIND_VALUES = {"reward-model": ("seq2seq", "scalar")}


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or not a readable JSON object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def output_kind(folder: str | os.PathLike) -> str | None:
    """The kind of seq2seq-rm output ``folder`` holds (see the table above), or None."""
    folder = Path(folder)
    for kind, name in META_FILES.items():
        meta = read_json(folder / name)
        if meta is None:
            continue
        if meta.get("kind") in _KIND_VALUES.get(kind, (kind,)) or (kind == "ppo-policy" and meta.get("stage") == "ppo"):
            return kind  # (policy.json files written before "kind" existed say "stage": "ppo")
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _describe(folder: Path, limit: int = 4) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown


def check_output_dir(out: str | os.PathLike, kind: str, overwrite: bool = False, inputs=()) -> Path:
    """Refuse ``out`` as the folder for a new ``kind`` output unless it is safe to write (module doc).

    ``inputs``: the paths the command reads (data, model, corpus); an output folder holding
    one of them is refused, since it would be replaced. Returns ``out`` as a Path.
    """
    if kind not in META_FILES:
        raise ValueError(f"unknown output kind {kind!r}")
    if not str(out).strip():
        raise ConfigError("--out is required")
    p = Path(out)
    resolved = p.expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {p} is a file; the {kind} output is a folder: give a folder path")
    cwd = Path.cwd().resolve()
    if _inside(cwd, resolved):
        raise ConfigError(f"--out {p} is the current folder or holds it; give a new folder for the {kind} output")
    for given in inputs:
        if given and Path(given).exists() and _inside(Path(given).expanduser().resolve(), resolved):
            raise ConfigError(f"--out {p} holds the input {given}, which writing the output would replace; "
                              "give another --out")
    clean_stale(resolved.parent)
    if not p.exists() or not any(p.iterdir()):
        return p
    found = output_kind(p)
    if found != kind:
        what = f"a {found} output" if found else f"other files ({_describe(p)})"
        raise ConfigError(f"--out {p} is not empty: it holds {what}, not a {kind} output of seq2seq-rm. "
                          "Give a new or empty folder (seq2seq-rm never replaces what it did not write)")
    if not overwrite:
        raise ConfigError(f"--out {p} already holds a {kind} output; pass --overwrite to replace it, "
                          "or give another folder")
    return p


def check_output_file(path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Path:
    """Refuse ``path`` as an output file when it is a folder, or an existing file without ``overwrite``."""
    if not str(path).strip():
        raise ConfigError(f"the {what} file path is empty")
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a folder; the {what} is a file: give a file path")
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} exists; pass --overwrite to replace it, or give another file")
    clean_stale(p.expanduser().resolve().parent)
    return p


def read_policy_template(folder: str | os.PathLike):
    """The prompt template a policy folder was trained with, or None when it records none.

    Reads ``policy.json`` (PPO) or ``sft.json`` (SFT), so generation, PPO and evaluation lay
    prompts out the way the policy learnt them.
    """
    from .config import TemplateConfig, from_dict

    for name in (META_FILES["ppo-policy"], META_FILES["sft"]):
        meta_file = Path(folder) / name
        if not meta_file.is_file():
            continue
        meta = read_json(meta_file)
        if meta is None:
            raise ConfigError(f"{meta_file}: not a valid JSON object")
        if meta.get("template") is not None:
            return from_dict(TemplateConfig, meta["template"])
    return None
