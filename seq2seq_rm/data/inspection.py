"""``seq2seq-rm data inspect``: what the loaders make of a data file, before anyone trains on it.

It reads the file exactly as the command that would use it does (preference pairs for ``rm
train`` / ``rm eval``, SFT rows for ``sft``, prompt rows for ``generate`` / ``ppo``; see
:func:`seq2seq_rm.data.loading.inspect_data`) and reports the detected format, the rows read, kept
and skipped (by reason, with the first row numbers of each and the first message), what defined
"chosen", format-specific counts (PKU-SafeRLHF safety and severity labels) and a few example
records. The same numbers can be written as JSON (``format``, ``rows``, ``kept``, ``skipped``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Options, check_columns_option, opt
from .records import LoadReport, PreferenceRecord, PromptRecord, TextRecord, prompt_text


@dataclass
class DataInspectConfig(Options):
    data: str = opt("", "the data: JSONL/JSON/Parquet file, datasets folder, or hub name")
    data_format: str = opt("auto", "auto, an SFT format (prompt, prompt_completion, messages, text) or a "
                                   "preference format (standard, conversational, pku_saferlhf, "
                                   "summarize_from_feedback, hh_rlhf)")
    split: str | None = opt(None, "split of a datasets folder, hub dataset or JSON object (default: train)")
    subset: str | None = opt(None, "hub dataset subset / configuration name")
    columns: dict = opt({}, "the dataset's own column names: columns.prompt=question columns.chosen=good ... "
                            "(names: prompt, chosen, rejected, response, completion, text, messages)")
    pku_preference: Literal["better", "safer"] = opt("better", "PKU-SafeRLHF: which label defines chosen")
    pku_drop_both_unsafe: bool = opt(
        False, "PKU-SafeRLHF: drop pairs whose two responses are both labelled unsafe (counted as skipped)")
    strict_data: bool = opt(False, "stop at the first problem of a row instead of counting it as skipped")
    limit: int | None = opt(None, "read only until N usable rows are kept", ge=1)
    examples: int = opt(2, "example records to show", ge=0)

    def check(self) -> None:
        check_columns_option(self.columns)


def _kind(fmt: str) -> str:
    from . import adapters

    if fmt in adapters.ADAPTERS:
        return "preference pairs"
    if fmt == "text":
        return "language-modelling texts (SFT)"
    return {"prompt_completion": "prompt/completion rows (SFT)", "messages": "conversations (SFT)"}.get(
        fmt, "prompt rows")


def _example(rec) -> dict:
    row = rec.origin.row if rec.origin else None
    if isinstance(rec, PreferenceRecord):
        return {"row": row, "prompt": rec.prompt, "chosen": rec.chosen, "rejected": rec.rejected}
    if isinstance(rec, TextRecord):
        return {"row": row, "text": rec.text}
    assert isinstance(rec, PromptRecord)
    return {"row": row, "prompt": rec.prompt, "response": rec.response}


def inspect_file(cfg: DataInspectConfig) -> dict:
    """Load ``cfg.data`` and return the inspection as a JSON-ready dict (see the module docstring)."""
    from .loading import inspect_data

    records, report, fmt = inspect_data(
        cfg.data, format=cfg.data_format, split=cfg.split, subset=cfg.subset, strict=cfg.strict_data,
        columns=cfg.columns, pku_preference=cfg.pku_preference, pku_drop_both_unsafe=cfg.pku_drop_both_unsafe,
        limit=cfg.limit,
    )
    return result_dict(report, fmt, records[: cfg.examples])


def result_dict(report: LoadReport, fmt: str, examples: list) -> dict:
    out = {
        "source": report.source,
        "format": report.format,
        "kind": _kind(fmt),
        "rows": report.rows_read,
        "kept": report.kept,
        "skipped": dict(report.skipped),
        "skipped_rows": {k: list(v) for k, v in report.skipped_rows.items()},
        "skip_examples": dict(report.skip_examples),
    }
    if report.chosen_by is not None:
        out["chosen_by"] = report.chosen_by
    if report.details:
        out["details"] = report.details
    out["examples"] = [_example(r) for r in examples]
    return out


SHOWN_CHARS = 300


def _show(value, indent: int) -> str:
    text = prompt_text(value) if isinstance(value, list) else "(none)" if value is None else str(value)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS] + f"... ({len(text) - SHOWN_CHARS} more characters)"
    return text.replace("\n", "\n" + " " * indent) if text else "(empty)"


def format_inspection(result: dict) -> str:
    """The inspection as text for a person (what ``data inspect`` prints)."""
    skipped = sum(result["skipped"].values())
    lines = [
        f"source:   {result['source']}",
        f"format:   {result['format']} ({result['kind']})",
        f"rows:     {result['rows']} read, {result['kept']} kept, {skipped} skipped",
    ]
    if "chosen_by" in result:
        lines.append(f"chosen:   defined by {result['chosen_by']}")
    for i, (reason, n) in enumerate(sorted(result["skipped"].items(), key=lambda kv: (-kv[1], kv[0]))):
        rows = result["skipped_rows"].get(reason) or []
        where = f" (row{'s' if n > 1 else ''} {', '.join(map(str, rows))}{', ...' if n > len(rows) else ''})" \
            if rows else ""
        lines.append(f"{'skipped:' if i == 0 else '':9s} {n} {reason}{where}")
        if reason in result["skip_examples"]:
            lines.append(f"{'':11s}first: {result['skip_examples'][reason]}")
    for name, counts in (result.get("details") or {}).items():
        lines.append(f"{name}:")
        for key, value in counts.items():
            shown = ", ".join(f"{k}: {v}" for k, v in sorted(value.items())) if isinstance(value, dict) else value
            lines.append(f"  {key}: {shown}")
    for n, ex in enumerate(result["examples"], start=1):
        lines.append(f"example {n} (row {ex['row']}):")
        for key in ("prompt", "chosen", "rejected", "response", "text"):
            if key in ex:
                lines.append(f"  {key + ':':10s}{_show(ex[key], 12)}")
    return "\n".join(lines)
