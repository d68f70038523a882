"""Writing an evaluation: ``metrics.json`` (summary + diagnostics), ``pairs.jsonl`` (every judged
pair in both orders) and ``report.md`` (the table :func:`format_table` prints)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text
from .winrate import WinRateResult

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
    """Write metrics.json, pairs.jsonl and report.md into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {**result.summary(), **({"diagnostics": diagnostics} if diagnostics else {}), **(extra or {})}
    paths = {"metrics": out / METRICS_FILE, "pairs": out / PAIRS_FILE, "report": out / REPORT_FILE}
    atomic_write_json(paths["metrics"], _clean(metrics))
    atomic_write_text(
        paths["pairs"], "".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in result.records)
    )
    atomic_write_text(paths["report"], format_table(result, diagnostics))
    return paths
