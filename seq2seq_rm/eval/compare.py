"""``seq2seq-rm eval``: judge two generation files against each other and write the report.

The output folder holds ``metrics.json`` (summary + length/refusal diagnostics per model),
``pairs.jsonl`` (every judged pair in both orders), ``report.md`` (the table
:func:`format_table` prints) and ``eval.json`` (what this folder is: see ``outputs.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text
from ..outputs import META_FILES, check_output_dir
from .judges import Judge
from .metrics import response_diagnostics
from .winrate import WinRateResult, load_responses, pairwise_winrate

logger = logging.getLogger(__name__)

METRICS_FILE, PAIRS_FILE, REPORT_FILE = "metrics.json", "pairs.jsonl", "report.md"


def _f(x, digits: int = 3, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


def _clean(obj):
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def format_table(result: WinRateResult, diagnostics: dict | None = None) -> str:
    """A markdown table of the win rate (and, given ``diagnostics`` per model name, lengths and refusals)."""
    conf = f"{round(100 * result.confidence)}% CI"
    lines = [
        f"### {result.name_a} vs {result.name_b} (judge: {result.judge})",
        "",
        f"| model a | model b | N | wins | ties | losses | invalid | win rate | {conf} | position bias |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {result.name_a} | {result.name_b} | {result.n} | {result.wins} | {result.ties} | {result.losses} "
        f"| {result.invalid} | {_f(result.win_rate, pct=True)} "
        f"| [{_f(result.ci_low, pct=True)}, {_f(result.ci_high, pct=True)}] | {_f(result.position_bias, pct=True)} |",
    ]
    if diagnostics:
        lines += [
            "",
            "| model | mean words | median words | p90 words | mean tokens | empty | refusal rate "
            "| refusals (benign) | refusals (hazardous) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, d in diagnostics.items():
            ln = d["length"]
            tok = ln.get("tokens", {}).get("mean")
            ref = d.get("refusals", {})
            lines.append(
                f"| {name} | {_f(ln['words']['mean'], 1)} | {_f(ln['words']['median'], 1)} | {_f(ln['words']['p90'], 1)} "
                f"| {_f(tok, 1) if tok is not None else 'n/a'} | {ln['empty']} | {_f(d.get('refusal_rate'), pct=True)} "
                f"| {_f(ref.get('benign', {}).get('rate'), pct=True)} | {_f(ref.get('hazardous', {}).get('rate'), pct=True)} |"
            )
    lines += [
        "",
        f"Win rate of {result.name_a} = (wins + ties/2) / N over pairs judged in both orders; a win or loss needs "
        f"both orders to agree. Invalid pairs are excluded from N. Position bias: share of valid pairs where the "
        f"same position won in both orders.",
    ]
    return "\n".join(lines) + "\n"


def write_eval_report(
    result: WinRateResult, out_dir: str | os.PathLike, diagnostics: dict | None = None, extra: dict | None = None
) -> dict[str, Path]:
    """Write metrics.json, pairs.jsonl, report.md and eval.json into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {**result.summary(), **({"diagnostics": diagnostics} if diagnostics else {}), **(extra or {})}
    paths = {"metrics": out / METRICS_FILE, "pairs": out / PAIRS_FILE, "report": out / REPORT_FILE}
    atomic_write_json(paths["metrics"], _clean(metrics))
    atomic_write_text(
        paths["pairs"], "".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in result.records)
    )
    atomic_write_text(paths["report"], format_table(result, diagnostics))
    atomic_write_json(out / META_FILES["eval"], {"kind": "eval", "a": result.name_a, "b": result.name_b,
                                                  "judge": result.judge, **(extra or {})})
    return paths


def evaluate_files(
    file_a: str | os.PathLike,
    file_b: str | os.PathLike,
    judge: Judge,
    out_dir: str | os.PathLike,
    *,
    names: tuple[str, str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    tokenizer=None,
    overwrite: bool = False,
    split: str | None = None,
    subset: str | None = None,
) -> tuple[WinRateResult, dict]:
    """Win rate of ``file_a``'s responses over ``file_b``'s (JSONL etc. with ``prompt`` and
    ``response``, same prompts in the same order), with length/refusal diagnostics; writes
    the report into ``out_dir`` (a new or empty folder, or an earlier eval with ``overwrite``).
    Returns (result, diagnostics)."""
    fa, fb = os.fspath(file_a), os.fspath(file_b)
    check_output_dir(out_dir, "eval", overwrite, inputs=[fa, fb])
    names = names or ("a", "b")
    rows_a, rows_b = load_responses(fa, split, subset), load_responses(fb, split, subset)
    result = pairwise_winrate(
        rows_a, rows_b, judge, names=names, files=(fa, fb), seed=seed, n_boot=n_boot, confidence=confidence
    )
    diagnostics = {names[0]: response_diagnostics(rows_a, tokenizer), names[1]: response_diagnostics(rows_b, tokenizer)}
    extra = {"file_a": fa, "file_b": fb}
    if getattr(judge, "dtype", None):  # a local model judge (hf:PATH): the dtype its weights were loaded in
        extra["judge_dtype"] = judge.dtype
    write_eval_report(result, out_dir, diagnostics, extra=extra)
    if result.invalid:
        logger.warning("%d of %d pairs had an invalid verdict (see pairs.jsonl)", result.invalid, len(rows_a))
    return result, diagnostics
