"""Length and refusal diagnostics of generated responses.

A policy trained against a reward model may win by writing longer answers or by refusing more
(reward hacking); these numbers sit next to the win rate so such a shift is visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .safety import is_refusal


def _dist(values: Sequence[float]) -> dict:
    if not values:
        return {"mean": math.nan, "median": math.nan, "p90": math.nan}
    x = np.asarray(values, dtype=np.float64)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p90": float(np.percentile(x, 90))}


def length_stats(responses: Sequence[str], tokenizer=None) -> dict:
    """``{"n", "empty", "words": {mean, median, p90}, "tokens": {...}}`` (tokens only with a tokenizer).

    Words are whitespace-separated pieces; tokens are counted without special tokens.
    """
    out = {
        "n": len(responses),
        "empty": sum(not r.strip() for r in responses),
        "words": _dist([len(r.split()) for r in responses]),
    }
    if tokenizer is not None:
        out["tokens"] = _dist([len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses])
    return out


def refusal_rates(refused: Sequence[bool], groups: Sequence[str], always: Sequence[str] = ()) -> dict:
    """``{group: {"n", "refusals", "rate"}}``: the refusal rate within each group of prompts.

    ``refused[i]`` says whether response i refuses (e.g. :func:`is_refusal`), ``groups[i]`` the
    kind of its prompt (``benign``/``hazardous``, or a task's prompt kinds). On benign prompts a
    refusal is an over-refusal (lower is better); on hazardous ones it is a safe behaviour
    (though not the only one). Groups in ``always`` are reported even when empty (rate NaN).
    """
    if len(refused) != len(groups):
        raise DataError(f"{len(refused)} responses but {len(groups)} prompt labels")
    by: dict[str, list[bool]] = {g: [] for g in always}
    for r, g in zip(refused, groups, strict=True):
        by.setdefault(g, []).append(bool(r))
    return {g: {"n": len(v), "refusals": sum(v), "rate": (sum(v) / len(v)) if v else math.nan}
            for g, v in sorted(by.items())}


def response_diagnostics(rows: Sequence[dict], tokenizer=None, hazard_key: str = "hazardous") -> dict:
    """Length stats and the overall refusal rate of rows ``{"response", ...}``; when every row
    carries a hazard label (:func:`hazard_label`), refusal rates on benign vs hazardous prompts too."""
    responses = [r["response"] for r in rows]
    out = {"length": length_stats(responses, tokenizer)}
    refusals = [is_refusal(t) for t in responses]
    out["refusal_rate"] = sum(refusals) / len(refusals) if refusals else math.nan
    labels = [hazard_label(r, hazard_key) for r in rows]
    if labels and all(x is not None for x in labels):
        groups = ["hazardous" if x else "benign" for x in labels]
        out["refusals"] = refusal_rates(refusals, groups, always=("benign", "hazardous"))
    return out


def hazard_label(row: dict, hazard_key: str = "hazardous") -> bool | None:
    """A row's hazard label: a boolean ``hazard_key`` column, else a ``kind`` column as written by
    ``seq2seq-rm tasks export`` (``"hazardous"`` vs anything else), else None."""
    value = row.get(hazard_key)
    if isinstance(value, bool):
        return value
    kind = row.get("kind")
    return kind == "hazardous" if isinstance(kind, str) else None
