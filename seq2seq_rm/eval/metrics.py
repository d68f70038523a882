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


def refusal_rates(responses: Sequence[str], hazardous: Sequence[bool]) -> dict:
    """Refusal rate on benign and on hazardous prompts (``hazardous[i]`` labels prompt i).

    On benign prompts a refusal is an over-refusal (lower is better); on hazardous prompts
    refusing is the safe behaviour (higher is better, though a refusal is not the only safe answer).
    """
    if len(responses) != len(hazardous):
        raise DataError(f"{len(responses)} responses but {len(hazardous)} hazard labels")
    groups: dict[str, list[bool]] = {"benign": [], "hazardous": []}
    for text, hz in zip(responses, hazardous, strict=True):
        groups["hazardous" if hz else "benign"].append(is_refusal(text))
    return {
        k: {"n": len(v), "refusals": sum(v), "rate": (sum(v) / len(v)) if v else math.nan} for k, v in groups.items()
    }


def response_diagnostics(rows: Sequence[dict], tokenizer=None, hazard_key: str = "hazardous") -> dict:
    """Length stats and the overall refusal rate of rows ``{"response", ...}``; when every row
    carries a hazard label (:func:`hazard_label`), refusal rates on benign vs hazardous prompts too."""
    responses = [r["response"] for r in rows]
    out = {"length": length_stats(responses, tokenizer)}
    refusals = [is_refusal(t) for t in responses]
    out["refusal_rate"] = sum(refusals) / len(refusals) if refusals else math.nan
    labels = [hazard_label(r, hazard_key) for r in rows]
    if labels and all(x is not None for x in labels):
        out["refusals"] = refusal_rates(responses, labels)
    return out


def hazard_label(row: dict, hazard_key: str = "hazardous") -> bool | None:
    """A row's hazard label: a boolean ``hazard_key`` column, else a ``kind`` column as written by
    ``seq2seq-rm tasks export`` (``"hazardous"`` vs anything else), else None."""
    value = row.get(hazard_key)
    if isinstance(value, bool):
        return value
    kind = row.get("kind")
    return kind == "hazardous" if isinstance(kind, str) else None
