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
public schemas). ``columns`` maps the names the adapters read (``prompt``, ``chosen``,
``rejected``, ``response``, ``completion``, ``text``, ``messages``) to a dataset's own column
names, e.g. ``{"prompt": "question", "chosen": "good", "rejected": "bad"}``.

What is an error and what is a skip:

* Problems of one row are counted as skips in the :class:`LoadReport` by reason (with the
  first few row numbers and the first message of each reason), so one bad row never loses a
  file: a malformed JSON line, a line that is not valid UTF-8 or not an object, a missing or
  null field, a wrong type, a bad label id, malformed chat messages, an HH transcript with no
  shared prompt, and the content problems (empty prompt, empty response, chosen identical to
  rejected). With ``strict=True`` each of them is a :class:`DataError` naming file, row and field.
* Problems of the file itself are always errors: it is missing, unreadable or of an unsupported
  type; a ``.json`` file that is not valid UTF-8 or not valid JSON as a whole (it is one
  document); a missing split; a first row whose columns match no known format (``auto``
  detection reads the first row that parses; name the format with ``format`` otherwise); no
  rows at all; no usable rows (every row skipped: the error lists the reasons and the first
  problem).
* Filters the user asked for (``pku_drop_both_unsafe``) are counted as skips too, and never
  raise, strict or not.
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
from seq2seq_rm.data.records import LoadReport, PreferenceRecord, Prompt, PromptRecord, TextRecord
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


def _row_error(message: str, file: str, row: int, kind: str) -> DataError:
    err = DataError(message, file, row)
    err.kind = kind  # counted under this reason when the row is skipped
    return err


def _iter_jsonl(path: Path, file: str) -> Iterator[tuple[int, dict | DataError]]:
    """Lines as ``(line number, object)``; a line that is not a JSON object comes as a DataError."""
    offset = 0  # byte offset of the current line in the file, for the UTF-8 error
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line_start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, line_start = raw[3:], line_start + 3  # tolerate a UTF-8 byte-order mark
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, _row_error(
                    f"not valid UTF-8 at byte offset {line_start + e.start} "
                    f"(column {e.start + 1} of the line); re-encode the file as UTF-8",
                    file, lineno, "not valid UTF-8",
                )
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, _row_error(f"malformed JSON: {e.msg} at column {e.colno}", file, lineno, "malformed JSON")
                continue
            if not isinstance(obj, dict):
                yield lineno, _row_error(f"expected a JSON object, got {type(obj).__name__}", file, lineno,
                                         "not a JSON object")
                continue
            yield lineno, obj


def _load_json(path: Path, file: str, split: str | None) -> list[tuple[int, dict | DataError]]:
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
    return [
        (i, row if isinstance(row, dict)
         else _row_error(f"expected a JSON object, got {type(row).__name__}", file, i, "not a JSON object"))
        for i, row in enumerate(obj, start=1)
    ]


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


def open_rows(
    path: str | os.PathLike, split: str | None = None, subset: str | None = None
) -> tuple[Iterable[tuple[int, dict | DataError]], str]:
    """Like :func:`read_rows`, but a row that cannot be read (a malformed JSONL line, a line that
    is not valid UTF-8, not a JSON object) comes as a :class:`DataError` in place of its dict, so
    the caller decides whether to skip it. Problems with the path itself are raised here."""
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


def _raise_bad_rows(rows: Iterable[tuple[int, dict | DataError]]) -> Rows:
    try:
        for row_no, raw in rows:
            if isinstance(raw, DataError):
                raise raw
            yield row_no, raw
    finally:
        if hasattr(rows, "close"):
            rows.close()


def read_rows(
    path: str | os.PathLike, split: str | None = None, subset: str | None = None
) -> tuple[Iterator[tuple[int, dict]], str]:
    """Open ``path`` and return ``(rows, container)``.

    ``rows`` yields ``(row_number, raw_dict)`` with 1-based row numbers (line numbers for
    JSONL); ``container`` is ``"jsonl"``, ``"json"``, ``"parquet"``, ``"datasets"`` or
    ``"hub"``. Problems with the path itself are raised here; a row that cannot be read raises
    a DataError while iterating (the loaders below skip it instead, see :func:`open_rows`).
    ``split`` selects a split of a ``DatasetDict`` folder, a hub dataset or a JSON object (a
    single-table file has none: asking for one is an error); ``subset`` names a hub dataset's
    configuration.
    """
    rows, container = open_rows(path, split, subset)
    return _raise_bad_rows(rows), container


# --------------------------------------------------------------------------- shared checks

# The names the adapters read, which the ``columns`` option can map to a dataset's own columns.
COLUMN_ROLES = ("prompt", "chosen", "rejected", "response", "completion", "text", "messages")


def check_columns(columns: dict | None) -> dict[str, str]:
    """Validate a ``columns`` mapping (our name -> the dataset's column name)."""
    if not columns:
        return {}
    if not isinstance(columns, dict):
        raise ConfigError(f"columns must map names to column names, e.g. prompt=question; got {columns!r}")
    out = {}
    for ours, theirs in columns.items():
        if ours not in COLUMN_ROLES:
            raise ConfigError(f"columns: unknown name {ours!r}; the names that can be mapped are "
                              f"{', '.join(COLUMN_ROLES)}")
        if not isinstance(theirs, str) or not theirs.strip():
            raise ConfigError(f"columns.{ours} must be a column name (a non-empty string), got {theirs!r}")
        out[ours] = theirs
    return out


def parse_columns(text: str | None) -> dict[str, str]:
    """``"prompt=question,chosen=good"`` (the ``--columns`` flag) as a mapping."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = part.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ConfigError(f"--columns takes NAME=COLUMN pairs separated by commas (e.g. "
                              f"prompt=question,chosen=good), got {text!r}")
        out[ours.strip()] = theirs.strip()
    return check_columns(out)


def rename_columns(raw: dict, columns: dict[str, str]) -> dict:
    """The row with the dataset's columns renamed to ours (a mapped column replaces a column of
    the same name; a mapped column missing from the row stays missing)."""
    if not columns:
        return raw
    sources = set(columns.values())
    out = {k: v for k, v in raw.items() if k not in sources and k not in columns}
    for ours, theirs in columns.items():
        if theirs in raw:
            out[ours] = raw[theirs]
    return out


def _check_options(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")


def _prompt_is_empty(prompt: Prompt) -> bool:
    if isinstance(prompt, str):
        return not prompt.strip()
    return not any(m["content"].strip() for m in prompt)


class _Skip(Exception):
    """A content problem: skipped and counted, or raised as DataError when strict.

    ``wanted=True`` marks a filter the user asked for: counted, never raised."""

    def __init__(self, reason: str, field: str | None, wanted: bool = False):
        super().__init__(reason)
        self.reason, self.field, self.wanted = reason, field, wanted


def _file_error(message: str, file: str, row: int | None = None) -> DataError:
    """A problem of the whole file found while reading a row (e.g. an unknown format): never a skip."""
    err = DataError(message, file, row)
    err.file_level = True
    return err


def _collect(
    rows: Iterable[tuple[int, dict | DataError]], report: LoadReport, convert, *, strict: bool,
    limit: int | None, columns: dict[str, str] | None = None,
) -> list:
    """Run ``convert(row_no, raw)`` over rows, counting skips, until ``limit`` are kept."""
    out = []
    with contextlib.ExitStack() as stack:
        if hasattr(rows, "close"):
            stack.callback(rows.close)  # close a JSONL file left open when limit stops early
        for row_no, raw in rows:
            report.rows_read += 1
            try:
                if isinstance(raw, DataError):
                    raise raw
                out.append(convert(row_no, rename_columns(raw, columns or {})))
            except _Skip as s:
                field = (columns or {}).get(s.field, s.field) if s.field else None
                message = str(DataError(s.reason, report.source, row_no, field))
                if strict and not s.wanted:
                    raise DataError(
                        f"{s.reason} (strict mode; without strict the row is skipped)",
                        report.source,
                        row_no,
                        field,
                    ) from None
                report.skip(s.reason, row_no, message)
                continue
            except DataError as e:
                if strict or e.row is None or getattr(e, "file_level", False):
                    raise
                report.skip(adapters.skip_reason(e), row_no, str(e))
                continue
            report.kept += 1
            if limit is not None and report.kept >= limit:
                break
    if not out:
        if report.rows_read == 0:
            raise DataError("no rows found", report.source)
        first = next(iter(report.skip_examples.values()), None)
        raise DataError(
            f"no usable rows in {report.source}: read {report.rows_read} rows "
            f"({report.format}), all skipped ({report.skips_text()})" + (f"; the first: {first}" if first else "")
        )
    return out


def _content_checks(record: PreferenceRecord, chosen_field: str, rejected_field: str) -> None:
    if _prompt_is_empty(record.prompt):
        raise _Skip("empty prompt", "prompt")
    for text, field in ((record.chosen, chosen_field), (record.rejected, rejected_field)):
        if not text.strip():
            raise _Skip("empty response", field)
    if record.chosen.strip() == record.rejected.strip():
        raise _Skip("chosen identical to rejected", rejected_field)


def _count(d: dict, key) -> None:
    d[key] = d.get(key, 0) + 1


def _pku_details(report: LoadReport, record: PreferenceRecord) -> None:
    """Safety and severity labels of the kept PKU-SafeRLHF pairs (report.details["pku_saferlhf"])."""
    d = report.details.setdefault("pku_saferlhf", {
        "pairs": 0, "both_safe": 0, "both_unsafe": 0, "chosen_safe_rejected_unsafe": 0,
        "chosen_unsafe_rejected_safe": 0, "safety_unlabelled": 0,
        "chosen_severity_level": {}, "rejected_severity_level": {},
    })
    d["pairs"] += 1
    c, r = record.meta.get("chosen_is_safe"), record.meta.get("rejected_is_safe")
    if c is None or r is None:
        d["safety_unlabelled"] += 1
    else:
        key = {(True, True): "both_safe", (False, False): "both_unsafe", (True, False): "chosen_safe_rejected_unsafe",
               (False, True): "chosen_unsafe_rejected_safe"}[(c, r)]
        d[key] += 1
    for side in ("chosen", "rejected"):
        level = record.meta.get(f"{side}_severity_level")
        if level is not None:
            _count(d[f"{side}_severity_level"], str(level))


def _chosen_by(fmt: str, pku_preference: str, columns: dict[str, str]) -> str:
    if fmt == "pku_saferlhf":
        return f"{pku_preference}_response_id"
    if fmt == "summarize_from_feedback":
        return "choice"
    return columns.get("chosen", "chosen")


# --------------------------------------------------------------------------- public API


def load_preferences(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    split: str | None = None,
    subset: str | None = None,
    strict: bool = False,
    pku_preference: str = "better",
    pku_drop_both_unsafe: bool = False,
    columns: dict[str, str] | None = None,
    limit: int | None = None,
) -> tuple[list[PreferenceRecord], LoadReport]:
    """Load preference pairs from ``path`` in one of :data:`PREFERENCE_FORMATS`.

    ``format="auto"`` detects the format from the first row's keys. ``pku_preference``
    picks ``better_response_id`` or ``safer_response_id`` for PKU-SafeRLHF rows;
    ``pku_drop_both_unsafe`` drops PKU pairs whose two responses are both labelled unsafe
    (under ``safer`` their chosen is only the less harmful unsafe answer). ``columns`` maps
    our column names to the dataset's. ``limit`` keeps the first N usable records. Returns the
    records and a report of what was read and skipped (``report.chosen_by`` names the label
    that defined chosen; ``report.details`` counts PKU safety and severity labels); raises
    DataError when no row is usable.
    """
    if format != "auto" and format not in adapters.ADAPTERS:
        raise ConfigError(
            f"unknown preference format {format!r}; expected auto or one of: {adapters.expected_formats_text()}"
        )
    if pku_preference not in PKU_PREFERENCES:
        raise ConfigError(
            f"pku_preference must be one of {', '.join(PKU_PREFERENCES)}, got {pku_preference!r}"
        )
    _check_options(limit)
    columns = check_columns(columns)
    file = str(path)
    rows, container = open_rows(path, split, subset)
    report = LoadReport(source=file)
    chosen_format = None if format == "auto" else format

    def convert(row_no: int, raw: dict) -> PreferenceRecord:
        nonlocal chosen_format
        if chosen_format is None:
            chosen_format = adapters.detect_format(raw)
            if chosen_format is None:
                raise _file_error(
                    f"cannot tell the preference format from the columns {sorted(raw)}; "
                    f"expected one of: {adapters.expected_formats_text()}"
                    + ("" if columns else "; name other columns with columns.prompt=COLUMN etc."),
                    file,
                    row_no,
                )
            report.format = f"{container}/{chosen_format}"
            report.chosen_by = _chosen_by(chosen_format, pku_preference, columns)
        ctx = RowContext(file, row_no, columns)
        if chosen_format == "pku_saferlhf":
            record, chosen_field, rejected_field = adapters.adapt_pku_saferlhf(
                raw, ctx, preference=pku_preference, require_safety=pku_drop_both_unsafe
            )
        else:
            record, chosen_field, rejected_field = adapters.ADAPTERS[chosen_format](raw, ctx)
        _content_checks(record, chosen_field, rejected_field)
        if chosen_format == "pku_saferlhf":
            if pku_drop_both_unsafe and record.meta.get("chosen_is_safe") is False \
                    and record.meta.get("rejected_is_safe") is False:
                raise _Skip("both responses unsafe (pku_drop_both_unsafe)", None, wanted=True)
            _pku_details(report, record)
        return record

    report.format = f"{container}/{chosen_format}" if chosen_format else container
    if chosen_format:
        report.chosen_by = _chosen_by(chosen_format, pku_preference, columns)
    return _collect(rows, report, convert, strict=strict, limit=limit, columns=columns), report


def load_prompts(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    subset: str | None = None,
    require_response: bool = False,
    strict: bool = False,
    columns: dict[str, str] | None = None,
    limit: int | None = None,
) -> tuple[list[PromptRecord], LoadReport]:
    """Load prompts (and optional responses) from ``path``.

    Rows have ``prompt`` (a string or a list of messages) and an optional ``response``
    string; other columns go to ``meta``. Preference rows are accepted too, so a preference
    test split can serve as prompts: the prompt is taken from the row (through the
    preference adapter when the format has no ``prompt`` column, e.g. HH-RLHF), the
    response is None, and chosen/rejected are kept in ``meta``.

    With ``require_response`` a row without a ``response`` is skipped ("missing field:
    response"), as is an empty one ("empty response"); both are errors when strict. An empty
    prompt is a skip.
    """
    _check_options(limit)
    columns = check_columns(columns)
    file = str(path)
    rows, container = open_rows(path, split, subset)
    report = LoadReport(source=file)
    mode: str | None = None  # "prompt" for rows with a prompt column, else a preference format

    def convert(row_no: int, raw: dict) -> PromptRecord:
        nonlocal mode
        if mode is None:
            mode = "prompt" if "prompt" in raw else adapters.detect_format(raw)
            if mode is None:
                raise _file_error(
                    f"no 'prompt' column and not a known preference format; columns found: "
                    f"{sorted(raw)}; expected 'prompt' [and 'response'] or one of: "
                    f"{adapters.expected_formats_text()}",
                    file,
                    row_no,
                )
            report.format = f"{container}/{mode}"
        ctx = RowContext(file, row_no, columns)
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
            why = "the row has no 'response'" if "response" not in raw else "'response' is null"
            raise ctx.error("response", f"{why}, and responses are required here", adapters.MISSING)
        if _prompt_is_empty(prompt):
            raise _Skip("empty prompt", "prompt")
        if require_response and not response.strip():
            raise _Skip("empty response", "response")
        return PromptRecord(prompt, response, ctx.origin, meta)

    report.format = container
    return _collect(rows, report, convert, strict=strict, limit=limit, columns=columns), report


SFT_FORMATS = tuple(adapters.SFT_ADAPTERS)


def load_sft(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    split: str | None = None,
    subset: str | None = None,
    strict: bool = False,
    columns: dict[str, str] | None = None,
    pku_preference: str = "better",
    pku_drop_both_unsafe: bool = False,
    limit: int | None = None,
) -> tuple[list[PromptRecord | TextRecord | PreferenceRecord], LoadReport, str]:
    """Load supervised fine-tuning rows; returns ``(records, report, format)``.

    Formats (:data:`SFT_FORMATS`, see :mod:`seq2seq_rm.data.adapters`): ``prompt`` (prompt +
    response), ``prompt_completion`` and ``text`` (TRL's standard SFT formats), ``messages``
    (TRL's conversational format: the final assistant turn is the target, earlier turns the
    prompt), or any preference format (the target is chosen; loaded by
    :func:`load_preferences`). ``auto`` detects the format from the first row. Records are
    :class:`PromptRecord` (prompt + target), :class:`TextRecord` or :class:`PreferenceRecord`.
    """
    known = SFT_FORMATS + PREFERENCE_FORMATS
    if format != "auto" and format not in known:
        raise ConfigError(f"unknown SFT data format {format!r}; expected auto or one of: "
                          f"{adapters.sft_formats_text()}")
    columns = check_columns(columns)
    if format == "auto":
        format = _peek_format(path, split, subset, columns, sft=True)
    if format in PREFERENCE_FORMATS:
        records, report = load_preferences(
            path, format=format, split=split, subset=subset, strict=strict, pku_preference=pku_preference,
            pku_drop_both_unsafe=pku_drop_both_unsafe, columns=columns, limit=limit,
        )
        return records, report, format
    _check_options(limit)
    file = str(path)
    rows, container = open_rows(path, split, subset)
    report = LoadReport(source=file, format=f"{container}/{format}")
    adapt = adapters.SFT_ADAPTERS[format]

    def convert(row_no: int, raw: dict):
        record, field = adapt(raw, RowContext(file, row_no, columns))
        if isinstance(record, TextRecord):
            if not record.text.strip():
                raise _Skip("empty text", "text")
            return record
        if _prompt_is_empty(record.prompt):
            raise _Skip("empty prompt", "prompt")
        if not record.response.strip():
            raise _Skip("empty response", field)
        return record

    return _collect(rows, report, convert, strict=strict, limit=limit, columns=columns), report, format


def first_row(path, split=None, subset=None, columns: dict[str, str] | None = None) -> tuple[int, dict]:
    """``(row number, row)`` of the first readable row, with ``columns`` renamed to our names."""
    rows, _ = open_rows(path, split, subset)
    try:
        for row_no, raw in rows:
            if isinstance(raw, dict):
                return row_no, rename_columns(raw, check_columns(columns))
    finally:
        if hasattr(rows, "close"):
            rows.close()
    raise DataError("no readable rows found", str(path))


def unknown_format_error(path, row_no: int, row: dict, columns: dict | None) -> DataError:
    return DataError(
        f"cannot tell the data format from the columns {sorted(row)}; the accepted formats are: "
        f"{adapters.sft_formats_text()}"
        + ("" if columns else "; name other columns with columns.prompt=COLUMN etc."),
        str(path), row_no,
    )


def _peek_format(path, split, subset, columns: dict[str, str], *, sft: bool) -> str:
    """The format of the first readable row: an SFT format or a preference format (an SFT format
    wins when both fit, e.g. preference rows that also have a ``response``), or ``prompt`` for
    prompt-only rows when ``sft=False``. A first row that fits none is an error."""
    row_no, row = first_row(path, split, subset, columns)
    fmt = adapters.detect_sft_format(row) or adapters.detect_format(row)
    if fmt is None and not sft and "prompt" in row:
        fmt = "prompt"
    if fmt is None:
        raise unknown_format_error(path, row_no, row, columns)
    return fmt


def inspect_data(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    split: str | None = None,
    subset: str | None = None,
    strict: bool = False,
    columns: dict[str, str] | None = None,
    pku_preference: str = "better",
    pku_drop_both_unsafe: bool = False,
    limit: int | None = None,
) -> tuple[list, LoadReport, str]:
    """Load ``path`` the way the command that would read it does: preference pairs, SFT rows or
    prompt-only rows, by ``format`` (``auto``: from the first row). Returns ``(records, report,
    format)``; ``format`` is ``prompt`` for rows that hold only prompts."""
    columns = check_columns(columns)
    known = ("auto",) + SFT_FORMATS + PREFERENCE_FORMATS
    if format not in known:
        raise ConfigError(f"unknown data format {format!r}; expected auto or one of: "
                          f"{adapters.sft_formats_text()}")
    if format == "auto":
        format = _peek_format(path, split, subset, columns, sft=False)
        if format == "prompt" and "response" not in first_row(path, split, subset, columns)[1]:
            records, report = load_prompts(path, split=split, subset=subset, strict=strict, columns=columns,
                                           limit=limit)
            return records, report, "prompt"
    return load_sft(path, format=format, split=split, subset=subset, strict=strict, columns=columns,
                    pku_preference=pku_preference, pku_drop_both_unsafe=pku_drop_both_unsafe, limit=limit)
