"""The report of ``demo`` / ``experiment``: report.html with PNG plots beside report.json.

Plots: win rates with bootstrap CIs (test and OOD), refusal rates by prompt kind,
response length against the oracle's ideal, PPO curves (RM reward, KL, length), and a
token-reward heatmap (token_rewards.html, embedded) of the seq2seq RM on PPO responses.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..io import atomic_write_text

ESC = html.escape


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_win_rates(results: dict, path: Path) -> None:
    plt = _plt()
    splits = list(results["splits"])
    names = list(results["splits"][splits[0]]["win_rates"])
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) * len(splits) + 1.5))
    y, labels = 0, []
    for split, colour in zip(splits, ("tab:blue", "tab:orange"), strict=False):
        for name in names:
            w = results["splits"][split]["win_rates"][name]
            ax.errorbar(w["win_rate"], y, xerr=[[w["win_rate"] - w["ci_low"]], [w["ci_high"] - w["win_rate"]]],
                        fmt="o", color=colour, capsize=4)
            labels.append(f"{name} ({split})")
            y += 1
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (oracle judge, both orders; 95% bootstrap CI)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_refusals(results: dict, path: Path) -> None:
    plt = _plt()
    splits = list(results["splits"])
    arms = results["arms"]
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        kinds = sorted({k for a in arms for k in results["splits"][split]["arms"][a]["refusal"]})
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            ref = results["splits"][split]["arms"][arm]["refusal"]
            ax.bar([j + i * width for j in range(len(kinds))], [ref.get(k, 0) for k in kinds], width, label=arm)
        ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(kinds))], kinds, rotation=15)
        ax.set_ylim(0, 1)
        ax.set_title(f"refusal rate ({split})")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lengths(results: dict, path: Path) -> None:
    plt = _plt()
    split = "test"
    arms = results["arms"]
    tasks = sorted(results["splits"][split]["arms"][arms[0]]["length"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / (len(arms) + 1)
    for i, arm in enumerate(arms):
        lengths = results["splits"][split]["arms"][arm]["length"]
        ax.bar([j + i * width for j in range(len(tasks))], [lengths[t] for t in tasks], width, label=arm)
    ideal = results["splits"][split]["arms"][arms[0]]["ideal_length"]
    ax.bar([j + len(arms) * width for j in range(len(tasks))], [ideal.get(t) or 0 for t in tasks], width,
           label="oracle ideal", color="black", alpha=0.35)
    ax.set_xticks([j + width * len(arms) / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("mean words per response (test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ppo_curves(runs, path: Path) -> None:
    plt = _plt()
    keys = (("rm_reward", "RM reward (sum per response)"), ("kl", "KL to reference"),
            ("response_length", "response tokens"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for arm, run_dir in runs[0].ppo_runs.items():
        rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x]
        for ax, (k, title) in zip(axes, keys, strict=True):
            ax.plot([r["step"] for r in rows], [r[k] for r in rows], label=arm)
            ax.set_title(title)
            ax.set_xlabel("PPO step")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"PPO curves, seed {runs[0].seed} (RM rewards are on each arm's own scale)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(headers, rows) -> str:
    h = "".join(f"<th>{ESC(str(x))}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{ESC(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def write_token_heatmap(runs, out: Path, n: int = 6) -> Path | None:
    """Token rewards of the seq2seq RM on the seq2seq-PPO policy's test responses."""
    from ..data.records import PromptRecord
    from ..rewards import load_reward_model
    from ..rewards.views import render_heatmap_html, score_records

    run = runs[0]
    rm_dir = run.dir / "rm-seq2seq"
    if "seq2seq" not in run.responses or not rm_dir.is_dir():
        return None
    rows = run.responses["seq2seq"]["test"]
    picked = rows[:: max(len(rows) // n, 1)][:n]
    rm = load_reward_model(rm_dir)
    recs = [PromptRecord(prompt=r["prompt"], response=r["response"]) for r in picked if r["response"].strip()]
    scored = score_records(rm, recs)
    path = out / "token_rewards.html"
    atomic_write_text(path, render_heatmap_html(scored, "Seq2seq RM token rewards on seq2seq-PPO test responses"))
    return path


def write_report(results: dict, runs, out: Path) -> Path:
    plot_win_rates(results, out / "win_rates.png")
    plot_refusals(results, out / "refusals.png")
    plot_lengths(results, out / "lengths.png")
    plot_ppo_curves(runs, out / "ppo_curves.png")
    heat = write_token_heatmap(runs, out)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>seq2seq-rm experiment</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#eee}img{max-width:100%}iframe{width:100%;height:520px;"
        "border:1px solid #ccc}.note{color:#555;font-size:90%}</style></head><body>",
        "<h1>Seq2seq RM vs scalar RM: PPO on the bundled tasks</h1>",
        f"<p class='note'>Tasks: {ESC(', '.join(results['config']['tasks']))}; seeds: "
        f"{ESC(str(results['config']['seeds']))}; model size: {ESC(results['config']['size'])}; "
        f"commit {ESC(str(results.get('commit')))}; "
        f"total time {results['total_seconds']:.0f} s. Judge: the tasks' programmatic oracles, every pair in both "
        "orders (a win only when both orders agree), 95% bootstrap confidence intervals over prompts "
        "(pooled over seeds).</p>",
        "<h2>Win rates</h2><img src='win_rates.png' alt='win rates'>",
    ]
    for split, res in results["splits"].items():
        rows = [[name, f"{w['win_rate']:.3f}", f"[{w['ci_low']:.3f}, {w['ci_high']:.3f}]", w["wins"], w["ties"],
                 w["losses"], w["n"]] for name, w in res["win_rates"].items()]
        parts.append(f"<h3>{ESC(split)}</h3>" + _table(["comparison", "win rate", "95% CI", "wins", "ties",
                                                        "losses", "N"], rows))
        by_task = [[task, name, f"{w['win_rate']:.3f}", f"[{w['ci_low']:.3f}, {w['ci_high']:.3f}]", w["n"]]
                   for task, d in res["by_task"].items() for name, w in d.items()]
        parts.append(_table(["task", "comparison", "win rate", "95% CI", "N"], by_task))
    parts.append("<h2>Refusal-to-response</h2><img src='refusals.png' alt='refusal rates'>")
    for split, res in results["splits"].items():
        kinds = sorted({k for a in res["arms"].values() for k in a["refusal"]})
        rows = [[arm] + [_pct(m["refusal"].get(k)) for k in kinds] for arm, m in res["arms"].items()]
        parts.append(f"<h3>refusal rate by prompt kind ({ESC(split)})</h3>" + _table(["arm"] + kinds, rows))
        cats = sorted({c for a in res["arms"].values() for c in a["unsafe_by_category"]})
        rows = [[arm] + [_pct(m["unsafe_by_category"].get(c)) for c in cats] for arm, m in res["arms"].items()]
        parts.append(f"<h3>unsafe rate per hazard category ({ESC(split)})</h3>" + _table(["arm"] + cats, rows))
    parts.append("<h2>Length</h2><img src='lengths.png' alt='lengths'>")
    for split, res in results["splits"].items():
        tasks = sorted(next(iter(res["arms"].values()))["length"])
        rows = [[arm] + [f"{m['length'][t]:.1f} (ideal {m['ideal_length'][t] or 0:.1f})" for t in tasks]
                + [f"{m['quality'][t]:.3f}" for t in tasks] for arm, m in res["arms"].items()]
        parts.append(f"<h3>mean words (ideal) and mean oracle quality ({ESC(split)})</h3>"
                     + _table(["arm"] + [f"words: {t}" for t in tasks] + [f"quality: {t}" for t in tasks], rows))
    parts.append("<h2>Reward models on held-out pairs</h2>")
    rows = [[seed, kind, f"{m['accuracy']:.3f}"] for seed, d in results["rm_eval"].items() for kind, m in d.items()]
    parts.append(_table(["seed", "RM", "pairwise accuracy (test pairs, annotator labels)"], rows))
    parts.append("<h2>PPO</h2><img src='ppo_curves.png' alt='PPO curves'>")
    if heat is not None:
        parts.append("<h2>Token rewards</h2><p class='note'>Green: the seq2seq RM would have written the token; "
                     "red: it would have written another (hover for which).</p>"
                     "<iframe src='token_rewards.html' title='token rewards'></iframe>")
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def markdown_summary(results: dict) -> str:
    """The headline numbers as markdown (report.md): win rates with CIs, refusal, length, quality."""
    lines = []
    for split, res in results["splits"].items():
        lines += [f"**{split}** prompts", "", "| comparison | win rate | 95% CI | wins / ties / losses | N |",
                  "|---|---|---|---|---|"]
        for name, w in res["win_rates"].items():
            lines.append(f"| {name} | {w['win_rate']:.3f} | [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
                         f"{w['wins']} / {w['ties']} / {w['losses']} | {w['n']} |")
        lines.append("")
        arms = res["arms"]
        tasks = sorted(next(iter(arms.values()))["quality"])
        kinds = sorted({k for m in arms.values() for k in m["refusal"]})
        lines += ["| arm | " + " | ".join(f"quality {t}" for t in tasks) + " | "
                  + " | ".join(f"words {t} (ideal)" for t in tasks) + " | "
                  + " | ".join(f"refusal {k}" for k in kinds) + " |",
                  "|---" * (1 + 2 * len(tasks) + len(kinds)) + "|"]
        for arm, m in arms.items():
            q = " | ".join(f"{m['quality'][t]:.3f}" for t in tasks)
            ln = " | ".join(f"{m['length'][t]:.1f} ({m['ideal_length'][t] or 0:.1f})" for t in tasks)
            rf = " | ".join(_pct(m["refusal"].get(k)) for k in kinds)
            lines.append(f"| {arm} | {q} | {ln} | {rf} |")
        lines.append("")
    acc = [f"seed {seed}: scalar {d['scalar']['accuracy']:.3f}, seq2seq {d['seq2seq']['accuracy']:.3f}"
           for seed, d in results["rm_eval"].items()]
    lines += ["RM pairwise accuracy on held-out annotator pairs: " + "; ".join(acc), ""]
    return "\n".join(lines)
