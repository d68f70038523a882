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


@dataclass
class LoadReport:
    """What a loader read, and which rows it skipped and why (counted, never silent)."""

    source: str
    rows_read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    format: str = ""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        s = f"{self.source}: read {self.rows_read} rows ({self.format}), kept {self.kept}"
        if self.skipped:
            s += ", skipped " + ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
        return s


def prompt_text(prompt: Prompt) -> str:
    """A plain-text view of a prompt, for logs and plain-text templates."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
