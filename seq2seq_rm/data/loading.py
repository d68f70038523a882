"""Read preference and prompt data from files, ``datasets`` folders or the Hugging Face hub.

Containers (chosen by ``path``):

* ``.jsonl``: one JSON object per line, blank lines ignored; the row number is the line
  number. Lines are decoded as strict UTF-8 here (not by ``open``) so a bad byte is reported
  with its line.
* ``.json``: a list of objects, or an object holding one list under ``data``, ``rows`` or
  ``train`` (or under ``split`` when given); the row number is the 1-based index.
* ``.parquet``: read with pyarrow in batches; 1-based index.
* a folder written by ``datasets`` ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` from
  which ``split`` is taken, ``"train"`` by default); 1-based index.
* ``owner/name`` that does not exist on disk: ``datasets.load_dataset(name, split=split or
  "train")``, refused when ``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1.

Rows are converted by the adapters in :mod:`seq2seq_rm.data.adapters` (which document the
public schemas). Structural problems raise :class:`DataError` naming file, row and field.
Content problems (empty prompt, empty response, chosen identical to rejected) are counted
as skips in the :class:`LoadReport`, or raised when ``strict=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from seq2seq_rm.data import adapters
from seq2seq_rm.data.adapters import RowContext
from seq2seq_rm.data.records import LoadReport, PreferenceRecord, Prompt, PromptRecord
from seq2seq_rm.errors import ConfigError, DataError

Rows = Iterator[tuple[int, dict]]

SUPPORTED_CONTAINERS = (
    ".jsonl, .json, .parquet, a folder written by datasets' save_to_disk, "
    "or a Hugging Face hub dataset id 'owner/name'"
)
PREFERENCE_FORMATS = tuple(adapters.ADAPTERS)
PKU_PREFERENCES = ("better", "safer")
JSON_LIST_KEYS = ("data", "rows", "train")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow")
ARROW_BATCH = 1024


# --------------------------------------------------------------------------- containers


def hub_offline() -> bool:
    """Whether the user asked for no hub access (read at call time, not import time)."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _iter_jsonl(path: Path, file: str) -> Rows:
    offset = 0  # byte offset of the current line in the file, for the UTF-8 error
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line_start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, line_start = raw[3:], line_start + 3  # tolerate a UTF-8 byte-order mark
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"not valid UTF-8 at byte offset {line_start + e.start} "
                    f"(column {e.start + 1} of the line); re-encode the file as UTF-8",
                    file,
                    lineno,
                ) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg} at column {e.colno}", file, lineno) from None
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {type(obj).__name__}", file, lineno)
            yield lineno, obj


def _load_json(path: Path, file: str, split: str | None) -> list[tuple[int, dict]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 at byte offset {e.start} (line {line})", file) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}", file) from None
    if isinstance(obj, dict):
        keys = [split] if split else [k for k in JSON_LIST_KEYS if k in obj]
        lists = [k for k in keys if isinstance(obj.get(k), list)]
        if len(lists) != 1:
            wanted = f"'{split}'" if split else " or ".join(f"'{k}'" for k in JSON_LIST_KEYS)
            raise DataError(
                f"expected a list of rows, or an object with one list under {wanted}; "
                f"found keys {sorted(obj)}",
                file,
            )
        obj = obj[lists[0]]
    if not isinstance(obj, list):
        raise DataError(f"expected a list of row objects, got {type(obj).__name__}", file)
    for i, row in enumerate(obj, start=1):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", file, i)
    return list(enumerate(obj, start=1))


def _iter_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=ARROW_BATCH):
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def _iter_dataset(ds: Any) -> Rows:
    # Arrow batches give nested lists of structs as lists of dicts, whatever the features
    # say (a legacy ``Sequence`` of dicts would otherwise come back as a dict of lists).
    row = 0
    for batch in ds.with_format("arrow").iter(batch_size=ARROW_BATCH):
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def _load_datasets_folder(path: Path, file: str, split: str | None) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for an unreadable folder
        raise DataError(f"cannot read as a datasets folder: {e}", file) from None
    if isinstance(ds, datasets.DatasetDict):
        name = split or "train"
        if name not in ds:
            raise DataError(f"split '{name}' not found; available splits: {', '.join(ds)}", file)
        ds = ds[name]
    return ds


def _load_hub(name: str, split: str | None, subset: str | None) -> Any:
    if hub_offline():
        raise DataError(
            "no such file or folder, and loading it as a Hugging Face hub dataset is disabled "
            "because HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set; give a local path or unset them",
            name,
        )
    import datasets

    try:
        return datasets.load_dataset(name, name=subset, split=split or "train")
    except Exception as e:  # network, auth, missing split: all the user can fix is the name
        raise DataError(f"not a local path, and loading it from the hub failed: {e}", name) from None


def read_rows(
    path: str | os.PathLike, split: str | None = None, subset: str | None = None
) -> tuple[Iterable[tuple[int, dict]], str]:
    """Open ``path`` and return ``(rows, container)``.

    ``rows`` yields ``(row_number, raw_dict)`` with 1-based row numbers (line numbers for
    JSONL); ``container`` is ``"jsonl"``, ``"json"``, ``"parquet"``, ``"datasets"`` or
    ``"hub"``. Problems with the path itself are raised here; problems in a row are raised
    while iterating. ``split`` selects a split of a ``DatasetDict`` folder, a hub dataset or
    a JSON object (a single-table file has none: asking for one is an error); ``subset``
    names a hub dataset's configuration.
    """
    file = str(path)
    p = Path(path)
    if subset and (p.exists() or not HUB_ID.match(file)):
        raise ConfigError(f"subset={subset!r} applies to hub datasets only; {file} is a local path")
    if split and p.is_file() and p.suffix.lower() in (".jsonl", ".parquet"):
        raise ConfigError(f"split={split!r}: {file} is a single table with no splits; leave split unset")
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return _iter_dataset(_load_datasets_folder(p, file, split)), "datasets"
        raise DataError(
            f"is a folder but not one written by datasets' save_to_disk "
            f"(no dataset_dict.json or state.json); supported inputs: {SUPPORTED_CONTAINERS}",
            file,
        )
    suffix = p.suffix.lower()
    if p.is_file():
        if suffix == ".jsonl":
            return _iter_jsonl(p, file), "jsonl"
        if suffix == ".json":
            return _load_json(p, file, split), "json"
        if suffix == ".parquet":
            return _iter_parquet(p), "parquet"
        raise DataError(
            f"unsupported file type '{suffix or p.name}'; supported inputs: {SUPPORTED_CONTAINERS}", file
        )
    if HUB_ID.match(file) and suffix not in FILE_SUFFIXES:
        return _iter_dataset(_load_hub(file, split, subset)), "hub"
    raise DataError("no such file or folder", file)


# --------------------------------------------------------------------------- shared checks


def _check_options(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")


def _prompt_is_empty(prompt: Prompt) -> bool:
    if isinstance(prompt, str):
        return not prompt.strip()
    return not any(m["content"].strip() for m in prompt)


class _Skip(Exception):
    """A content problem: skipped and counted, or raised as DataError when strict."""

    def __init__(self, reason: str, field: str):
        super().__init__(reason)
        self.reason, self.field = reason, field


def _collect(
    rows: Iterable[tuple[int, dict]], report: LoadReport, convert, *, strict: bool, limit: int | None
) -> list:
    """Run ``convert(row_no, raw)`` over rows, counting skips, until ``limit`` are kept."""
    out = []
    with contextlib.ExitStack() as stack:
        if hasattr(rows, "close"):
            stack.callback(rows.close)  # close a JSONL file left open when limit stops early
        for row_no, raw in rows:
            report.rows_read += 1
            try:
                out.append(convert(row_no, raw))
            except _Skip as s:
                if strict:
                    raise DataError(
                        f"{s.reason} (strict mode; without strict the row is skipped)",
                        report.source,
                        row_no,
                        s.field,
                    ) from None
                report.skip(s.reason)
                continue
            report.kept += 1
            if limit is not None and report.kept >= limit:
                break
    if not out:
        if report.rows_read == 0:
            raise DataError("no rows found", report.source)
        skips = ", ".join(f"{n} {r}" for r, n in sorted(report.skipped.items()))
        raise DataError(
            f"no usable rows in {report.source}: read {report.rows_read} rows "
            f"({report.format}), all skipped ({skips})"
        )
    return out


# --------------------------------------------------------------------------- public API


def load_preferences(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    split: str | None = None,
    subset: str | None = None,
    strict: bool = False,
    pku_preference: str = "better",
    limit: int | None = None,
) -> tuple[list[PreferenceRecord], LoadReport]:
    """Load preference pairs from ``path`` in one of :data:`PREFERENCE_FORMATS`.

    ``format="auto"`` detects the format from the first row's keys. ``pku_preference``
    picks ``better_response_id`` or ``safer_response_id`` for PKU-SafeRLHF rows. ``limit``
    keeps the first N usable records. Returns the records and a report of what was read
    and skipped; raises DataError when no row is usable.
    """
    if format != "auto" and format not in adapters.ADAPTERS:
        raise ConfigError(
            f"unknown preference format {format!r}; expected auto or one of {', '.join(PREFERENCE_FORMATS)}"
        )
    if pku_preference not in PKU_PREFERENCES:
        raise ConfigError(
            f"pku_preference must be one of {', '.join(PKU_PREFERENCES)}, got {pku_preference!r}"
        )
    _check_options(limit)
    file = str(path)
    rows, container = read_rows(path, split, subset)
    report = LoadReport(source=file)
    chosen_format = None if format == "auto" else format

    def convert(row_no: int, raw: dict) -> PreferenceRecord:
        nonlocal chosen_format
        if chosen_format is None:
            chosen_format = adapters.detect_format(raw)
            if chosen_format is None:
                raise DataError(
                    f"cannot tell the preference format from the columns {sorted(raw)}; "
                    f"expected one of: {adapters.expected_formats_text()}",
                    file,
                    row_no,
                )
            report.format = f"{container}/{chosen_format}"
        ctx = RowContext(file, row_no)
        if chosen_format == "pku_saferlhf":
            record, chosen_field, rejected_field = adapters.adapt_pku_saferlhf(
                raw, ctx, preference=pku_preference
            )
        else:
            record, chosen_field, rejected_field = adapters.ADAPTERS[chosen_format](raw, ctx)
        if _prompt_is_empty(record.prompt):
            raise _Skip("empty prompt", "prompt")
        for text, field in ((record.chosen, chosen_field), (record.rejected, rejected_field)):
            if not text.strip():
                raise _Skip("empty response", field)
        if record.chosen.strip() == record.rejected.strip():
            raise _Skip("chosen identical to rejected", rejected_field)
        return record

    report.format = f"{container}/{chosen_format}" if chosen_format else container
    return _collect(rows, report, convert, strict=strict, limit=limit), report


def load_prompts(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    subset: str | None = None,
    require_response: bool = False,
    strict: bool = False,
    limit: int | None = None,
) -> tuple[list[PromptRecord], LoadReport]:
    """Load prompts (and optional responses) from ``path``.

    Rows have ``prompt`` (a string or a list of messages) and an optional ``response``
    string; other columns go to ``meta``. Preference rows are accepted too, so a preference
    test split can serve as prompts: the prompt is taken from the row (through the
    preference adapter when the format has no ``prompt`` column, e.g. HH-RLHF), the
    response is None, and chosen/rejected are kept in ``meta``.

    With ``require_response`` a missing ``response`` column is a DataError; an empty one is
    a skip ("empty response"), or an error when strict. An empty prompt is a skip.
    """
    _check_options(limit)
    file = str(path)
    rows, container = read_rows(path, split, subset)
    report = LoadReport(source=file)
    mode: str | None = None  # "prompt" for rows with a prompt column, else a preference format

    def convert(row_no: int, raw: dict) -> PromptRecord:
        nonlocal mode
        if mode is None:
            mode = "prompt" if "prompt" in raw else adapters.detect_format(raw)
            if mode is None:
                raise DataError(
                    f"no 'prompt' column and not a known preference format; columns found: "
                    f"{sorted(raw)}; expected 'prompt' [and 'response'] or one of: "
                    f"{adapters.expected_formats_text()}",
                    file,
                    row_no,
                )
            report.format = f"{container}/{mode}"
        ctx = RowContext(file, row_no)
        if mode == "prompt":
            prompt = adapters.validate_prompt(adapters.require(raw, "prompt", ctx), ctx)
            response = raw.get("response")
            if response is not None and not isinstance(response, str):
                raise ctx.error("response", f"expected a string, got {type(response).__name__}")
            meta = {k: v for k, v in raw.items() if k not in ("prompt", "response")}
        else:
            record, _, _ = adapters.ADAPTERS[mode](raw, ctx)
            prompt, response = record.prompt, None
            meta = {**record.meta, "chosen": record.chosen, "rejected": record.rejected}
        if require_response and response is None:
            # A missing column is a wrong input file, not a content problem: always an error.
            why = "the row has no 'response'" if "response" not in raw else "'response' is null"
            raise ctx.error("response", f"{why}, and responses are required here")
        if _prompt_is_empty(prompt):
            raise _Skip("empty prompt", "prompt")
        if require_response and not response.strip():
            raise _Skip("empty response", "response")
        return PromptRecord(prompt, response, ctx.origin, meta)

    report.format = container
    return _collect(rows, report, convert, strict=strict, limit=limit), report
