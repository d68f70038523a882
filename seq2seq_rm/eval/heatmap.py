"""Token-level rewards as a standalone HTML heatmap (inline CSS, no scripts, no external assets).

Each response token is a ``<span>`` whose background shows its reward on a diverging
red-white-green scale, normalised per page by the largest absolute reward (so the same colour
means the same reward everywhere on the page). Hovering a token shows its reward and, for a
seq2seq RM, the token the RM would have written there (marked when it differs). Whitespace is
drawn visibly: a space as a middle dot, a tab as an arrow, a newline as a return sign followed by
a line break. Every text is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from .._text import prompt_preview
from ..data.records import prompt_text
from ..io import atomic_write_text

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


def inspect_to_html(
    rm_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 16,
    limit: int | None = None,
    title: str | None = None,
) -> Path:
    """Score the responses in ``data_path`` (rows with ``prompt`` and ``response``) with the RM in
    ``rm_dir`` and write the heatmap page to ``out_path``. Returns the path."""
    from ..data.loading import load_prompts
    from ..rewards.base import load_reward_model
    from ..rewards.inspect import score_records

    rm = load_reward_model(rm_dir)
    records, _ = load_prompts(data_path, require_response=True, limit=limit)
    rows = score_records(rm, records, batch_size)
    title = title or f"{rm.kind} RM token rewards: {Path(os.fspath(rm_dir)).name} on {Path(os.fspath(data_path)).name}"
    out = Path(out_path)
    atomic_write_text(out, render_heatmap_html(rows, title))
    return out
