"""The common interface of the bundled tasks.

A task is a seeded generator of prompts (:class:`TaskExample`), of responses of several
*kinds* for each prompt, and an ORACLE (:meth:`Task.score`) that judges the true quality of
any response text from the prompt text alone. Preference pairs are two responses of
different kinds for one prompt, labelled by the simulated annotator
(:mod:`seq2seq_rm.tasks.annotator`: oracle label, then documented biases, then noise).

Splits:

* ``train`` and ``test`` come from the same distribution; every example has a
  ``meta["split_key"]`` (the underlying problem, e.g. a question without its greeting) and
  a stable hash of that key sends it to ``test`` (``TEST_PERCENT`` %) or ``train``, so the
  two are disjoint, also in near-duplicates;
* ``ood`` draws only from what the task holds out of train/test (hazard categories and
  topics, document topics, operations); each task lists it in ``OOD_DESCRIPTION``.

``prompts(split, n, seed)`` is deterministic per ``(split, n, seed)``; it draws without
repeats while the split's pool allows it, then allows repeats (small pools, e.g. safety ood).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ._text import bucket, prompt_str

SPLITS = ("train", "test", "ood")
TEST_PERCENT = 20
# Default number of rows per split written by export_split (pairs = prompts = sft rows).
DEFAULT_SIZES = {"train": 2000, "test": 400, "ood": 400}


@dataclass
class TaskExample:
    """One prompt with its prompt kind (e.g. ``hazardous``) and what the oracle needs."""

    prompt: str
    kind: str
    meta: dict = field(default_factory=dict)


class Task:
    """Base class: subclasses implement ``_draw``, ``responses``, ``reference``, ``score``,
    ``labels``, ``pair_kinds`` and may override ``parse``."""

    name: str = ""
    OOD_DESCRIPTION: str = ""

    # ---- to implement -------------------------------------------------------------
    def _draw(self, family: str, rng: random.Random) -> TaskExample:
        """A random example from ``family`` ("in" for train/test, "ood")."""
        raise NotImplementedError

    def responses(self, ex: TaskExample, rng: random.Random) -> dict[str, str]:
        raise NotImplementedError

    def reference(self, ex: TaskExample) -> str:
        raise NotImplementedError

    def score(self, prompt, response: str) -> float:
        raise NotImplementedError

    def labels(self, prompt, response: str) -> dict:
        raise NotImplementedError

    def pair_kinds(self, ex: TaskExample) -> list[tuple[str, str]]:
        """The response-kind pairs a preference pair for ``ex`` may compare."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------
    def split_of(self, ex: TaskExample) -> str:
        if ex.meta.get("ood"):
            return "ood"
        return "test" if bucket(f"{self.name}|{ex.meta['split_key']}") < TEST_PERCENT else "train"

    def prompts(self, split: str, n: int, seed: int = 0) -> list[TaskExample]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{self.name}|prompts|{split}|{n}|{seed}")
        family = "ood" if split == "ood" else "in"
        out: list[TaskExample] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < n:
            tries += 1
            ex = self._draw(family, rng)
            if self.split_of(ex) != split:
                continue
            # No repeats while the pool allows it; after many misses, repeats are fine.
            if ex.prompt in seen and tries < 50 * (n + 10):
                continue
            seen.add(ex.prompt)
            ex.meta.setdefault("task", self.name)
            ex.meta["split"] = split
            out.append(ex)
        return out

    def preferences(self, split: str, n: int, seed: int = 0, annotator=None) -> list[dict]:
        """``n`` rows ``{"prompt", "chosen", "rejected", "meta"}`` from the annotator."""
        from .annotator import Annotator

        annotator = annotator if annotator is not None else Annotator()
        rng = random.Random(f"{self.name}|pairs|{split}|{n}|{seed}")
        rows = []
        for ex in self.prompts(split, n, seed):
            rows.append(annotator.annotate(self, ex, rng))
        return rows

    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        return [{"prompt": ex.prompt, "response": self.reference(ex)} for ex in self.prompts(split, n, seed)]

    def prompt_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        return [{"prompt": ex.prompt, "task": self.name, "split": split, "kind": ex.kind,
                 "meta": _jsonable(ex.meta)} for ex in self.prompts(split, n, seed)]

    def ideal_length(self, prompt) -> int | None:
        """Words in the oracle's ideal response to ``prompt`` (None when it is not this task's)."""
        return self.labels(prompt, "").get("ideal_length")

    def parse(self, prompt) -> TaskExample | None:
        """Recover the example from the prompt text alone (None when it is not this task's)."""
        raise NotImplementedError

    @staticmethod
    def _text(prompt) -> str:
        return prompt_str(prompt)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    return obj
