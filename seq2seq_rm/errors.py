"""Errors a user can act on: each names where the problem is."""

from __future__ import annotations


class Seq2SeqRMError(Exception):
    """Base class for errors raised on bad input or bad configuration."""


class DataError(Seq2SeqRMError):
    """A problem with one input file, row and field.

    The message reads ``FILE, row N, field 'F': what is wrong`` so a user can open the
    file at that row. ``row`` is 1-based (the line number for JSONL files).
    """

    def __init__(self, message: str, file: str | None = None, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field, self.reason = file, row, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__((", ".join(where) + ": " if where else "") + message)


class ModelError(Seq2SeqRMError):
    """A model or tokenizer folder cannot be used (missing files, unsafe format, mismatch)."""


class ConfigError(Seq2SeqRMError, ValueError):
    """An option, a configuration file or an override is invalid (also a ValueError)."""
