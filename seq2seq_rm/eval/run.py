"""``seq2seq-rm eval``: judge two generation files against each other and write the report."""

from __future__ import annotations

import logging
import os

from .judges import Judge
from .metrics import response_diagnostics
from .report import write_eval_report
from .winrate import WinRateResult, load_responses, pairwise_winrate

logger = logging.getLogger(__name__)


def evaluate_files(
    file_a: str | os.PathLike,
    file_b: str | os.PathLike,
    judge: Judge,
    out_dir: str | os.PathLike,
    *,
    names: tuple[str, str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    tokenizer=None,
) -> tuple[WinRateResult, dict]:
    """Win rate of ``file_a``'s responses over ``file_b``'s (JSONL etc. with ``prompt`` and
    ``response``, same prompts in the same order), with length/refusal diagnostics; writes
    metrics.json, pairs.jsonl and report.md into ``out_dir``. Returns (result, diagnostics)."""
    fa, fb = os.fspath(file_a), os.fspath(file_b)
    names = names or ("a", "b")
    rows_a, rows_b = load_responses(fa), load_responses(fb)
    result = pairwise_winrate(
        rows_a, rows_b, judge, names=names, files=(fa, fb), seed=seed, n_boot=n_boot, confidence=confidence
    )
    diagnostics = {names[0]: response_diagnostics(rows_a, tokenizer), names[1]: response_diagnostics(rows_b, tokenizer)}
    write_eval_report(result, out_dir, diagnostics, extra={"file_a": fa, "file_b": fb})
    if result.invalid:
        logger.warning("%d of %d pairs had an invalid verdict (see pairs.jsonl)", result.invalid, len(rows_a))
    return result, diagnostics
