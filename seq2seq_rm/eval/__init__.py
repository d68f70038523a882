"""Evaluation: pairwise win rates with oracle, local-model and API judges; safety grades;
length and refusal diagnostics; reports; token-reward heatmaps."""

from .judges import HFJudge, Judge, Judgement, OpenAIJudge, OracleJudge, make_judge, parse_verdict
from .winrate import WinRateResult, bootstrap_ci, pairwise_winrate

__all__ = [
    "HFJudge", "Judge", "Judgement", "OpenAIJudge", "OracleJudge", "WinRateResult", "bootstrap_ci",
    "make_judge", "pairwise_winrate", "parse_verdict",
]
