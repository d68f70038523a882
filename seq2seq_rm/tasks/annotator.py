"""A simulated annotator: the oracle's label, then documented biases, then label noise.

For one prompt the task gives two responses of different kinds; the annotator scores
both with the task's ORACLE (:meth:`Task.score`) and prefers the better one, then applies,
in this order (each draw is independent):

1. **Refusal bias** (``REFUSAL_BIAS`` = 0.35): on *risky-looking* prompts (prompt kind in
   ``RISKY_KINDS``: hazardous requests AND risky-looking benign ones such as "how do I kill
   a stuck process"), when exactly one of the two responses is a bare refusal, the
   annotator prefers the refusal with probability ``refusal_bias``, whatever the oracle
   says. This is the refusal-to-response bias the paper targets.
2. **Length bias** (``LENGTH_BIAS`` = 0.35): for the tasks in ``LENGTH_BIAS_TASKS``
   (summarisation), when the two responses differ in word count, the annotator prefers the
   longer one with probability ``length_bias``, regardless of quality (long-response bias).
3. **Label noise** (``NOISE`` = 0.10): the label is flipped with probability ``noise``.

So on an eligible pair where the oracle prefers the non-refusal (or the shorter response),
the biased choice is made with probability ``b (1 - noise) + (1 - b) noise`` (0.38 with the
defaults), against ``noise`` (0.10) for an unbiased annotator.

Each row carries ``meta``: ``kinds`` ([chosen kind, rejected kind]), ``oracle_prefers``
(the kind the oracle prefers), ``oracle_scores`` ([chosen, rejected]), ``biased`` (a bias
fired on this pair), ``bias`` ("refusal", "length" or None), ``bias_changed`` (the bias
overrode the oracle), ``flipped`` (noise flipped the label), ``agrees_with_oracle``, plus
the task name, split, prompt kind and the example's own meta under ``example``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

REFUSAL_BIAS = 0.35
LENGTH_BIAS = 0.35
NOISE = 0.10
RISKY_KINDS = ("hazardous", "risky_benign")
LENGTH_BIAS_TASKS = ("summarize",)
_MAX_TRIES = 20


@dataclass
class Annotator:
    refusal_bias: float = REFUSAL_BIAS
    length_bias: float = LENGTH_BIAS
    noise: float = NOISE
    risky_kinds: tuple[str, ...] = RISKY_KINDS
    length_bias_tasks: tuple[str, ...] = LENGTH_BIAS_TASKS

    def __post_init__(self) -> None:
        for name in ("refusal_bias", "length_bias", "noise"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    def annotate(self, task, ex, rng: random.Random) -> dict:
        """One preference row for ``ex``: two responses of different kinds, labelled."""
        for _ in range(_MAX_TRIES):
            responses = task.responses(ex, rng)
            ka, kb = rng.choice(task.pair_kinds(ex))
            if rng.random() < 0.5:
                ka, kb = kb, ka
            ra, rb = responses[ka], responses[kb]
            sa, sb = task.score(ex.prompt, ra), task.score(ex.prompt, rb)
            if abs(sa - sb) > 1e-9 and ra != rb:
                break
        else:  # pragma: no cover - the tasks' kinds always differ in score
            raise RuntimeError(f"{task.name}: no pair with distinct oracle scores for {ex.prompt!r}")
        return self.label(task, ex, (ka, ra, sa), (kb, rb, sb), rng)

    def label(self, task, ex, a: tuple[str, str, float], b: tuple[str, str, float],
              rng: random.Random) -> dict:
        """Label a pair ``(kind, response, oracle score)`` x 2 and return the row."""
        oracle_a = a[2] > b[2]
        prefer_a = oracle_a
        u_bias, u_noise = rng.random(), rng.random()  # always drawn: determinism
        bias = None
        if ex.kind in self.risky_kinds:
            ref_a = bool(task.labels(ex.prompt, a[1]).get("bare_refusal"))
            ref_b = bool(task.labels(ex.prompt, b[1]).get("bare_refusal"))
            if ref_a != ref_b:
                bias = "refusal"
                if u_bias < self.refusal_bias:
                    prefer_a = ref_a
                else:
                    bias = None
        if bias is None and task.name in self.length_bias_tasks:
            la, lb = len(a[1].split()), len(b[1].split())
            if la != lb and u_bias < self.length_bias:
                bias = "length"
                prefer_a = la > lb
        bias_changed = prefer_a != oracle_a
        flipped = u_noise < self.noise
        if flipped:
            prefer_a = not prefer_a
        chosen, rejected = (a, b) if prefer_a else (b, a)
        oracle_kind = a[0] if oracle_a else b[0]
        return {
            "prompt": ex.prompt,
            "chosen": chosen[1],
            "rejected": rejected[1],
            "meta": {
                "task": task.name,
                "split": ex.meta.get("split"),
                "prompt_kind": ex.kind,
                "kinds": [chosen[0], rejected[0]],
                "oracle_prefers": oracle_kind,
                "oracle_scores": [round(chosen[2], 4), round(rejected[2], 4)],
                "biased": bias is not None,
                "bias": bias,
                "bias_changed": bias_changed,
                "flipped": flipped,
                "agrees_with_oracle": chosen[0] == oracle_kind,
                "example": {k: v for k, v in ex.meta.items() if k not in ("task", "split")},
            },
        }
