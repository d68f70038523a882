"""``rm eval`` (pairwise accuracy on held-out pairs) and ``rm score`` (token rewards of responses).

Both work for either RM kind through the ``RewardModel`` interface.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..data.records import PreferenceRecord, PromptRecord
from .base import TokenRewards, encode_responses


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def score_responses(rm, prompts, responses: list[str]) -> tuple[TokenRewards, torch.Tensor]:
    """Token rewards of response texts (EOS appended, as a policy would end them). Returns (rewards, ids)."""
    ids, mask = encode_responses(responses, rm.tokenizer)
    return rm.token_rewards(prompts, ids, mask), ids


SEQ2SEQ_SCORES = ("mean", "sum", "agree_fraction")


def evaluate_pairs(rm, records: list[PreferenceRecord], batch_size: int = 16) -> dict:
    """Pairwise accuracy: P(score(chosen) > score(rejected)), ties counted as half.

    For a seq2seq RM the headline uses ``rm.extraction.sequence_score`` and every other
    sequence score is reported too, together with the share of agreeing tokens on chosen
    vs rejected responses (a seq2seq RM that learnt the preference copies chosen responses
    more readily than rejected ones).
    """
    names = SEQ2SEQ_SCORES if rm.kind == "seq2seq" else ("sum",)
    sc = {n: [] for n in names}
    sr = {n: [] for n in names}
    len_c, len_r = [], []
    for chunk in _chunks(records, batch_size):
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
    out = {
        "kind": rm.kind,
        "pairs": len(records),
        "sequence_score": headline,
        **acc(headline),
        "mean_tokens_chosen": torch.cat(len_c).mean().item(),
        "mean_tokens_rejected": torch.cat(len_r).mean().item(),
    }
    if rm.kind == "seq2seq":
        out["by_sequence_score"] = {n: acc(n) for n in names}
        out["agree_fraction_chosen"] = torch.cat(sc["agree_fraction"]).mean().item()
        out["agree_fraction_rejected"] = torch.cat(sr["agree_fraction"]).mean().item()
    return out


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """Each token as text (byte-level pieces decoded one by one; special tokens kept visible)."""
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def score_records(rm, records: list[PromptRecord], batch_size: int = 16) -> list[dict]:
    """Per-response dicts: tokens, rewards, (seq2seq) the RM's token at each position, and scores."""
    rows = []
    for chunk in _chunks(records, batch_size):
        tr, ids = score_responses(rm, [r.prompt for r in chunk], [r.response for r in chunk])
        for b, rec in enumerate(chunk):
            n = int(tr.mask[b].sum())
            tok_ids = ids[b, :n].tolist()
            row = {
                "prompt": rec.prompt,
                "response": rec.response,
                "tokens": token_strings(rm.tokenizer, tok_ids),
                "token_ids": tok_ids,
                "rewards": [round(float(x), 6) for x in tr.rewards[b, :n]],
                "score_sum": float(tr.rewards[b, :n].sum()),
                "score_mean": float(tr.rewards[b, :n].mean()),
            }
            if tr.agree is not None:
                pred = tr.predicted_ids[b, :n].tolist()
                row["rm_tokens"] = token_strings(rm.tokenizer, pred)
                row["agree"] = [bool(x) for x in tr.agree[b, :n]]
                row["agree_fraction"] = sum(row["agree"]) / max(n, 1)
                div = [i for i, a in enumerate(row["agree"]) if not a]
                row["first_divergence"] = div[0] if div else None
            if rec.origin is not None:
                row["source"] = {"file": rec.origin.file, "row": rec.origin.row}
            rows.append(row)
    return rows


def render_terminal(rows: list[dict], console=None, limit: int = 10) -> None:
    """Coloured view: green tokens the RM agrees with, red ones it would have written
    differently (with its own token after an arrow); the scalar RM shows its score."""
    from rich.console import Console
    from rich.text import Text

    from .._text import prompt_preview

    console = console or Console()
    for i, row in enumerate(rows[:limit]):
        console.rule(f"[bold]response {i + 1}[/] sum={row['score_sum']:+.3f} mean={row['score_mean']:+.3f}")
        console.print(Text("prompt: ", style="bold") + Text(prompt_preview(row["prompt"])))
        text = Text()
        if "agree" in row:
            for tok, rm_tok, ok, r in zip(row["tokens"], row["rm_tokens"], row["agree"], row["rewards"], strict=True):
                shown = tok.replace("\n", "\u21b5\n")
                if ok:
                    text.append(shown, style="black on green" if r > 0 else "black on grey70")
                else:
                    text.append(shown, style="white on red")
                    text.append(f"\u2192{rm_tok!r}", style="dim red")
        else:
            text.append("".join(row["tokens"]))
            text.append(f"  [score {row['score_sum']:+.3f} on the last token]", style="bold cyan")
        console.print(text)
    if len(rows) > limit:
        console.print(f"... {len(rows) - limit} more in the JSON output")
