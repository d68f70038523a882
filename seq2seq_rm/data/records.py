"""The record types every stage consumes.

A prompt is either a plain string or a list of chat messages
(``[{"role": "user", "content": "..."}, ...]``); a response is always the text of the
final assistant turn. Records remember where they came from so later errors can name
the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass(frozen=True)
class Origin:
    """Where a record was read: file (or dataset name) and 1-based row."""

    file: str
    row: int


@dataclass(frozen=True)
class PreferenceRecord:
    """One human (or simulated) preference: ``chosen`` is preferred over ``rejected``."""

    prompt: Prompt
    chosen: str
    rejected: str
    origin: Origin | None = None
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PromptRecord:
    """A prompt, optionally with a response to score (``rm score``) or a reference."""

    prompt: Prompt
    response: str | None = None
    origin: Origin | None = None
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TextRecord:
    """A plain text for language modelling (SFT ``text`` format): the loss is on every token."""

    text: str
    origin: Origin | None = None
    meta: dict = field(default_factory=dict, compare=False)


SKIP_ROWS_SHOWN = 5  # row numbers remembered per skip reason


@dataclass
class LoadReport:
    """What a loader read, and which rows it skipped and why (counted, never silent).

    ``skipped`` counts rows by reason; ``skipped_rows`` keeps the first few row numbers of each
    reason and ``skip_examples`` the full message of its first row (file, row, field, what).
    ``chosen_by`` names what defined "chosen" for preference data (a column or a label such as
    PKU-SafeRLHF's ``safer_response_id``); ``details`` holds format-specific counts (e.g.
    PKU-SafeRLHF's safety and severity labels) that are not skips.
    """

    source: str
    rows_read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    format: str = ""
    skipped_rows: dict[str, list[int]] = field(default_factory=dict)
    skip_examples: dict[str, str] = field(default_factory=dict)
    chosen_by: str | None = None
    details: dict = field(default_factory=dict)

    def skip(self, reason: str, row: int | None = None, message: str | None = None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        rows = self.skipped_rows.setdefault(reason, [])
        if row is not None and len(rows) < SKIP_ROWS_SHOWN:
            rows.append(row)
        if message is not None:
            self.skip_examples.setdefault(reason, message)

    def skips_text(self) -> str:
        """``N reason (rows a, b, ...)`` for every reason, most frequent first."""
        parts = []
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            rows = self.skipped_rows.get(reason) or []
            where = ""
            if rows:
                more = ", ..." if n > len(rows) else ""
                where = f" (row{'s' if n > 1 else ''} {', '.join(map(str, rows))}{more})"
            parts.append(f"{n} {reason}{where}")
        return ", ".join(parts)

    def summary(self) -> str:
        s = f"{self.source}: read {self.rows_read} rows ({self.format}), kept {self.kept}"
        if self.skipped:
            s += ", skipped " + self.skips_text()
        return s

    def as_dict(self) -> dict:
        """What an output's metadata records about its data (JSON-ready)."""
        out = {"source": self.source, "format": self.format, "rows_read": self.rows_read, "kept": self.kept,
               "skipped": dict(self.skipped), "skipped_rows": {k: list(v) for k, v in self.skipped_rows.items()}}
        if self.chosen_by is not None:
            out["chosen_by"] = self.chosen_by
        if self.details:
            out["details"] = self.details
        return out


def prompt_text(prompt: Prompt) -> str:
    """A plain-text view of a prompt, for logs and plain-text templates."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
