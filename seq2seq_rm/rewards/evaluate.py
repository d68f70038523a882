"""``rm eval``: pairwise accuracy of either RM kind on held-out preference pairs."""

from __future__ import annotations

import torch

from ..data.records import PreferenceRecord
from .views import chunks, score_responses

SEQ2SEQ_SCORES = ("mean", "sum", "agree_fraction")


def evaluate_pairs(rm, records: list[PreferenceRecord], batch_size: int = 16,
                   groups: dict[str, list[str]] | None = None) -> dict:
    """Pairwise accuracy: P(score(chosen) > score(rejected)), ties counted as half.

    ``groups``: breakdowns, each a name and one label per record (e.g. ``{"task": [...],
    "pair": [...]}``); the headline accuracy is then also given per label, from the same scores,
    under ``by[name][label]`` = ``{"accuracy", "ties", "pairs"}``.

    For a seq2seq RM the headline uses ``rm.extraction.sequence_score`` and every other
    sequence score is reported too, together with the share of agreeing tokens on chosen
    vs rejected responses (a seq2seq RM that learnt the preference copies chosen responses
    more readily than rejected ones).
    """
    for name, labels in (groups or {}).items():
        if len(labels) != len(records):
            raise ValueError(f"groups[{name!r}] has {len(labels)} labels for {len(records)} records")
    names = SEQ2SEQ_SCORES if rm.kind == "seq2seq" else ("sum",)
    sc = {n: [] for n in names}
    sr = {n: [] for n in names}
    len_c, len_r = [], []
    for chunk in chunks(records, batch_size):
        prompts = [r.prompt for r in chunk]
        tc, _ = score_responses(rm, prompts, [r.chosen for r in chunk])
        tr, _ = score_responses(rm, prompts, [r.rejected for r in chunk])
        for n in names:
            sc[n].append(tc.sequence_scores(n))
            sr[n].append(tr.sequence_scores(n))
        len_c.append(tc.mask.sum(-1).float())
        len_r.append(tr.mask.sum(-1).float())

    def acc(n):
        c, r = torch.cat(sc[n]), torch.cat(sr[n])
        return {
            "accuracy": ((c > r).float().mean() + 0.5 * (c == r).float().mean()).item(),
            "ties": (c == r).float().mean().item(),
            "mean_score_chosen": c.mean().item(),
            "mean_score_rejected": r.mean().item(),
        }

    headline = rm.extraction.sequence_score if rm.kind == "seq2seq" else "sum"
    c, r = torch.cat(sc[headline]), torch.cat(sr[headline])
    out = {
        "kind": rm.kind,
        "pairs": len(records),
        "sequence_score": headline,
        **acc(headline),
        "mean_tokens_chosen": torch.cat(len_c).mean().item(),
        "mean_tokens_rejected": torch.cat(len_r).mean().item(),
    }
    out["calibration"] = calibration(c, r)
    if groups:
        out["by"] = {name: _accuracy_by_label(c, r, labels) for name, labels in groups.items()}
    if rm.kind == "seq2seq":
        out["by_sequence_score"] = {n: acc(n) for n in names}
        out["agree_fraction_chosen"] = torch.cat(sc["agree_fraction"]).mean().item()
        out["agree_fraction_rejected"] = torch.cat(sr["agree_fraction"]).mean().item()
    return out


def _accuracy_by_label(chosen: torch.Tensor, rejected: torch.Tensor, labels: list[str]) -> dict:
    out = {}
    for g in sorted(set(labels)):
        idx = torch.tensor([i for i, x in enumerate(labels) if x == g])
        c, r = chosen[idx], rejected[idx]
        out[g] = {"accuracy": ((c > r).float().mean() + 0.5 * (c == r).float().mean()).item(),
                  "ties": (c == r).float().mean().item(), "pairs": len(idx)}
    return out


def calibration(chosen: torch.Tensor, rejected: torch.Tensor, bins: int = 4) -> list[dict]:
    """Pairwise accuracy by score margin: pairs sorted by ``|score(chosen) - score(rejected)|``
    and cut into ``bins`` groups of (nearly) equal size. A calibrated RM is more often right
    when its margin is larger. Each bin: ``margin_low``, ``margin_high``, ``n``, ``accuracy``
    (ties count half)."""
    margin = (chosen - rejected).abs()
    order = torch.argsort(margin, stable=True)
    out = []
    for idx in torch.tensor_split(order, min(bins, max(len(order), 1))):
        if len(idx) == 0:
            continue
        c, r = chosen[idx], rejected[idx]
        out.append({"margin_low": float(margin[idx].min()), "margin_high": float(margin[idx].max()), "n": len(idx),
                    "accuracy": float((c > r).float().mean() + 0.5 * (c == r).float().mean())})
    return out
