"""Pairwise win rate of model a against model b, judged in both presentation orders.

Protocol (position bias of LLM judges is large; Vinyals et al. 2015, "Order Matters", show
that the order of a model's inputs changes its output, and judge studies find the same):

1. Every pair is judged twice: (a, b) shown as (A, B), then (b, a) shown as (A, B).
2. A *win* for a only if both orders prefer a; a *loss* only if both prefer b; any other
   combination of valid verdicts (disagreement, or a tie in either order) is a *tie*.
3. An invalid verdict in either order makes the pair *invalid*: counted and reported, left out
   of N, never a win.
4. ``win_rate = (wins + ties / 2) / N`` over the N valid pairs, with a percentile bootstrap
   confidence interval (``n_boot`` resamples of the N per-pair scores 1 / 0.5 / 0, seeded).
5. ``position_bias`` = share of valid pairs where the same *position* won in both orders
   (A then A, or B then B): the judge followed the position, not the response.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.adapters import RowContext, require, validate_prompt
from ..data.loading import read_rows
from ..data.records import Prompt
from ..errors import ConfigError, DataError
from .judges import Judge, judge_all

OUTCOMES = ("win", "loss", "tie", "invalid")


@dataclass
class WinRateResult:
    """Counts, win rate with its bootstrap CI, position bias, and one record per pair."""

    name_a: str
    name_b: str
    judge: str
    wins: int
    losses: int
    ties: int
    invalid: int
    n: int
    win_rate: float
    ci_low: float
    ci_high: float
    confidence: float
    position_bias: float
    n_boot: int
    seed: int
    records: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """Everything but the per-pair records (JSON-ready; NaN becomes None)."""
        d = asdict(self)
        d.pop("records")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def bootstrap_ci(
    scores, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (NaN, NaN when empty)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // x.size)  # bounded memory for large N
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        means[s : s + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def hierarchical_bootstrap_ci(
    scores_by_seed, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds of the mean score within each seed,
    resampling seeds, then prompts within each resampled seed (two-stage bootstrap).

    ``scores_by_seed``: one sequence of per-prompt scores per training seed. Seeds are the
    runs that can differ (a new seed retrains every model), prompts the noise within a run;
    pooling all prompts as if one run produced them hides the seed variance and gives
    intervals that are too narrow. With one seed this is the plain bootstrap over prompts.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in scores_by_seed if len(g)]
    if not groups:
        return math.nan, math.nan
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    k = len(groups)
    # within[s][b, j]: the mean of a fresh resample of seed s's prompts, for the j-th pick of replicate b
    within = [g[rng.integers(0, g.size, size=(n_boot, k, g.size))].mean(axis=2) for g in groups]
    picks = rng.integers(0, k, size=(n_boot, k))
    means = np.stack(within)[picks, np.arange(n_boot)[:, None], np.arange(k)[None, :]].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _get(row, key):
    return row[key] if isinstance(row, dict) else getattr(row, key)


def check_aligned(rows_a: list, rows_b: list, file_a: str = "a", file_b: str = "b") -> None:
    """Raise DataError naming both files and the row when the prompts do not line up."""
    for i, (ra, rb) in enumerate(zip(rows_a, rows_b, strict=False)):
        if _get(ra, "prompt") != _get(rb, "prompt"):
            row_a = _get(ra, "row") if isinstance(ra, dict) and "row" in ra else i + 1
            row_b = _get(rb, "row") if isinstance(rb, dict) and "row" in rb else i + 1
            raise DataError(
                f"the prompt differs from {file_b} row {row_b}; both files must hold the same prompts "
                f"in the same order (pair {i + 1})",
                file_a,
                row_a,
                "prompt",
            )
    if len(rows_a) != len(rows_b):
        longer, n_long, shorter = (file_a, len(rows_a), file_b) if len(rows_a) > len(rows_b) else (
            file_b, len(rows_b), file_a)
        n = min(len(rows_a), len(rows_b))
        raise DataError(
            f"{file_a} has {len(rows_a)} rows but {file_b} has {len(rows_b)}: rows from pair {n + 1} on "
            f"exist only in {longer} ({n_long} rows), not in {shorter}; both files must hold the same prompts",
            longer,
            n + 1,
        )


def load_responses(path: str | os.PathLike, split: str | None = None, subset: str | None = None) -> list[dict]:
    """Rows ``{"row", "prompt", "response", ...other columns}`` of a generation file (every row kept,
    in order: an empty response is a legitimate, bad answer, and skipping rows would break alignment)."""
    file = str(path)
    rows, _ = read_rows(path, split, subset)
    out = []
    for row_no, raw in rows:
        ctx = RowContext(file, row_no)
        prompt: Prompt = validate_prompt(require(raw, "prompt", ctx), ctx)
        response = require(raw, "response", ctx)
        if not isinstance(response, str):
            raise ctx.error("response", f"expected a string, got {type(response).__name__}")
        extra = {k: v for k, v in raw.items() if k not in ("prompt", "response", "row")}
        out.append({**extra, "row": row_no, "prompt": prompt, "response": response})
    if not out:
        raise DataError("no rows found", file)
    return out


def _side(verdict: str, swapped: bool) -> str | None:
    """Which model a verdict prefers: "a", "b", "tie" or None (invalid)."""
    if verdict == "tie":
        return "tie"
    if verdict not in ("A", "B"):
        return None
    first_is_a = not swapped
    return "a" if (verdict == "A") == first_is_a else "b"


def pairwise_winrate(
    rows_a: list,
    rows_b: list,
    judge: Judge,
    *,
    names: tuple[str, str] = ("a", "b"),
    files: tuple[str, str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> WinRateResult:
    """Win rate of ``rows_a`` over ``rows_b`` (aligned rows with ``prompt`` and ``response``)."""
    files = files or names
    check_aligned(rows_a, rows_b, *files)
    prompts = [_get(r, "prompt") for r in rows_a]
    ra = [_get(r, "response") for r in rows_a]
    rb = [_get(r, "response") for r in rows_b]
    # Both orders in one call: a judge that runs requests concurrently has all of them in flight.
    both = judge_all(judge, list(zip(prompts, ra, rb, strict=True)) + list(zip(prompts, rb, ra, strict=True)))
    first, second = both[: len(prompts)], both[len(prompts) :]
    counts = dict.fromkeys(OUTCOMES, 0)
    scores, followed, records = [], 0, []
    for i, (j1, j2) in enumerate(zip(first, second, strict=True)):
        s1, s2 = _side(j1.winner, False), _side(j2.winner, True)
        if s1 is None or s2 is None:
            outcome = "invalid"
        elif s1 == s2 == "a":
            outcome = "win"
        elif s1 == s2 == "b":
            outcome = "loss"
        else:
            outcome = "tie"
        counts[outcome] += 1
        if outcome != "invalid":
            scores.append({"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome])
            followed += j1.winner == j2.winner and j1.winner in ("A", "B")
        records.append(
            {
                "pair": i + 1,
                "prompt": prompts[i],
                "response_a": ra[i],
                "response_b": rb[i],
                "order_ab": {"winner": j1.winner, "raw": j1.raw, "error": j1.error},
                "order_ba": {"winner": j2.winner, "raw": j2.raw, "error": j2.error},
                "outcome": outcome,
            }
        )
    n = len(scores)
    win_rate = float(np.mean(scores)) if n else math.nan
    lo, hi = bootstrap_ci(scores, n_boot, confidence, seed)
    return WinRateResult(
        name_a=names[0], name_b=names[1], judge=judge.name,
        wins=counts["win"], losses=counts["loss"], ties=counts["tie"], invalid=counts["invalid"], n=n,
        win_rate=win_rate, ci_low=lo, ci_high=hi, confidence=confidence,
        position_bias=followed / n if n else math.nan, n_boot=n_boot, seed=seed, records=records,
    )
