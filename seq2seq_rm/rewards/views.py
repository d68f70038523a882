"""Token-level rewards, looked at: score responses with a reward model, and show the result.

One place for every view of token rewards (``rm score``, ``inspect``, the experiment's heatmap):

* :func:`score_file` / :func:`score_records`: per-response rows with the tokens, their rewards,
  and for a seq2seq RM the token it would have written at each position and where it first
  diverges; both RM kinds through the ``RewardModel`` interface;
* :func:`render_terminal`: a coloured terminal view (green: the RM agrees; red: it would have
  written the token after the arrow; the scalar RM shows its score on the last token);
* :func:`render_heatmap_html`: a standalone HTML page (inline CSS, no scripts, no external
  assets). Each token is a ``<span>`` whose background shows its reward on a diverging
  red-white-green scale, normalised per page by the largest absolute reward (the same colour
  means the same reward everywhere on the page). Hovering a token shows its reward and, for a
  seq2seq RM, the token the RM would have written there (marked when it differs). Whitespace is
  drawn visibly: a space as a middle dot, a tab as an arrow, a newline as a return sign followed
  by a line break. Every text is HTML-escaped.
"""

from __future__ import annotations

import html
import logging
import math
import os
from collections.abc import Iterator

import torch

from .._text import prompt_preview
from ..data.records import PromptRecord, prompt_text
from .base import TokenRewards, encode_responses

log = logging.getLogger(__name__)

def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def score_responses(rm, prompts, responses: list[str]) -> tuple[TokenRewards, torch.Tensor]:
    """Token rewards of response texts (EOS appended, as a policy would end them). Returns (rewards, ids)."""
    ids, mask = encode_responses(responses, rm.tokenizer)
    return rm.token_rewards(prompts, ids, mask), ids


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """Each token as text (byte-level pieces decoded one by one; special tokens kept visible)."""
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def score_records(rm, records: list[PromptRecord], batch_size: int = 16) -> list[dict]:
    """Per-response dicts: tokens, rewards, (seq2seq) the RM's token at each position, and scores."""
    rows = []
    for chunk in chunks(records, batch_size):
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


def score_file(rm, path: str | os.PathLike, *, batch_size: int = 16, limit: int | None = None,
               split: str | None = None, subset: str | None = None) -> list[dict]:
    """:func:`score_records` of the rows of a file (``prompt`` and ``response`` columns)."""
    from ..data.loading import load_prompts

    records, report = load_prompts(path, require_response=True, limit=limit, split=split, subset=subset)
    log.info(report.summary())
    return score_records(rm, records, batch_size)


# ------------------------------------------------------------------------------------------ HTML

NEG = (215, 48, 39)  # red
MID = (255, 255, 255)
POS = (26, 152, 80)  # green

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}
.meta{color:#555;font-size:13px;margin-bottom:16px}
.legend{display:flex;align-items:center;gap:8px;font-size:12px;margin-bottom:18px}
.bar{width:240px;height:14px;border:1px solid #999;
  background:linear-gradient(to right,rgb(215,48,39),#fff,rgb(26,152,80))}
.resp{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 14px;margin:0 0 16px}
.resp h2{font-size:14px;margin:0 0 6px}
.prompt{white-space:pre-wrap;color:#444;font-size:13px;background:#f3f3f3;padding:6px 8px;
  border-radius:4px;margin-bottom:8px}
.toks{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:15px;line-height:2.0;overflow-wrap:anywhere}
.t{position:relative;padding:2px 1px;border-right:1px solid rgba(0,0,0,.06);white-space:pre}
.t.dis{outline:1px dashed #7a0000;outline-offset:-1px}
.t .ws{opacity:.45}
.t.dark{color:#fff}
.t:hover{outline:2px solid #333;z-index:2}
.t:hover::after{content:attr(data-tip);position:absolute;left:0;top:100%;margin-top:4px;z-index:3;
  background:#222;color:#fff;font-size:12px;padding:4px 6px;border-radius:4px;white-space:pre;
  font-family:ui-monospace,Menlo,Consolas,monospace}
.scores{font-size:12px;color:#555}
"""


def reward_color(value: float, scale: float) -> str:
    """``rgb(...)`` for ``value`` on the red-white-green scale, ``scale`` = the page's max |reward|."""
    if not math.isfinite(value) or scale <= 0:
        return "rgb(255,255,255)"
    t = max(-1.0, min(1.0, value / scale))
    end = POS if t > 0 else NEG
    a = abs(t)
    r, g, b = (round(m + (e - m) * a) for m, e in zip(MID, end, strict=True))
    return f"rgb({r},{g},{b})"


def visible_token(tok: str) -> str:
    """HTML for a token's text with whitespace made visible (escaped)."""
    if tok == "":
        return '<span class="ws">\u2205</span>'
    parts = []
    for ch in tok:
        if ch == " ":
            parts.append('<span class="ws">\u00b7</span>')
        elif ch == "\n":
            parts.append('<span class="ws">\u21b5</span><br>')
        elif ch == "\t":
            parts.append('<span class="ws">\u21e5</span>')
        elif ch == "\r":
            parts.append('<span class="ws">\u240d</span>')
        else:
            parts.append(html.escape(ch))
    return "".join(parts)


def _tip(tok: str, reward: float, rm_tok: str | None, agree: bool | None) -> str:
    tip = f"reward {reward:+.4f}\ntoken {tok!r}"
    if rm_tok is not None:
        mark = "" if agree else "  (differs)"
        tip += f"\nRM would write {rm_tok!r}{mark}"
    return tip


def render_heatmap_html(rows: list[dict], title: str = "Token rewards") -> str:
    """A standalone HTML page for rows from :func:`seq2seq_rm.rewards.inspect.score_records`
    (``tokens``, ``rewards``; optional ``rm_tokens``, ``agree``, ``prompt``, ``score_sum``...)."""
    scale = max((abs(r) for row in rows for r in row.get("rewards", []) if math.isfinite(r)), default=0.0)
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<div class="meta">{len(rows)} response{"s" if len(rows) != 1 else ""}; colours normalised to the '
        f"largest |reward| on this page ({scale:.4g}). Hover a token for its reward"
        f"{' and the token the RM would have written' if any('rm_tokens' in r for r in rows) else ''}. "
        "Dashed outline: the RM would have written a different token.</div>",
        f'<div class="legend"><span>{-scale:+.3g}</span><span class="bar"></span><span>{scale:+.3g}</span></div>',
    ]
    for i, row in enumerate(rows):
        tokens, rewards = row.get("tokens", []), row.get("rewards", [])
        rm_tokens, agree = row.get("rm_tokens"), row.get("agree")
        scores = []
        for key, label in (("score_sum", "sum"), ("score_mean", "mean"), ("agree_fraction", "agree")):
            if isinstance(row.get(key), int | float):
                scores.append(f"{label}={row[key]:+.4f}" if key != "agree_fraction" else f"{label}={row[key]:.1%}")
        out.append('<div class="resp">')
        out.append(f"<h2>Response {i + 1} <span class=\"scores\">{esc(' '.join(scores))}</span></h2>")
        if row.get("prompt") is not None:
            full = prompt_text(row["prompt"])
            out.append(f'<div class="prompt" title="{esc(prompt_preview(row["prompt"], 300))}">{esc(full)}</div>')
        out.append('<div class="toks">')
        spans = []
        for j, (tok, r) in enumerate(zip(tokens, rewards, strict=False)):
            rm_tok = rm_tokens[j] if rm_tokens is not None and j < len(rm_tokens) else None
            ag = agree[j] if agree is not None and j < len(agree) else None
            cls = "t dis" if ag is False else "t"
            if scale > 0 and math.isfinite(r) and abs(r) / scale > 0.6:
                cls += " dark"  # white text on a saturated background
            tip = esc(_tip(tok, r, rm_tok, ag), quote=True)
            spans.append(
                f'<span class="{cls}" style="background:{reward_color(r, scale)}" data-r="{r:.6g}" '
                f'data-tip="{tip}" title="{tip}">{visible_token(tok)}</span>'
            )
        out.append("<wbr>".join(spans))  # a line may break between tokens, never inside one
        out.append("</div></div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
