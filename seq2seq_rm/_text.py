"""Small text helpers for logs and views."""

from __future__ import annotations

from .data.records import Prompt, prompt_text


def prompt_preview(prompt: Prompt, width: int = 160) -> str:
    text = prompt_text(prompt).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "\u2026"
