"""The report of ``demo`` / ``experiment``: report.html with PNG plots, report.md, report.json.

Figures (each arm keeps one colour in every figure, and is named with its extraction options):
win rates with two-stage bootstrap intervals (seeds, then prompts) and N; refusal rates by
prompt kind; response length against the oracle's ideal; over-optimisation curves (oracle
quality of PPO rollouts against KL from the reference and against the arm's own RM reward,
mean over seeds with a band of +-1 standard deviation, after Gao et al. 2022); length curves
over PPO steps against the ideal; the reward models' calibration; the bias sweep. Tables give
every number with its N and a row per seed; degenerate results are listed as warnings at the
top; side-by-side samples show each arm's response with its oracle score and the seq2seq RM's
own rewrite; a token-reward heatmap shows the seq2seq RM's rewards on PPO responses.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ..io import atomic_write_text

ESC = html.escape
FIXED_COLOURS = {"sft": "#7f7f7f", "scalar": "#d62728", "seq2seq": "#1f77b4"}
OTHER_COLOURS = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def arm_colours(arms: list[str]) -> dict[str, str]:
    out, others = {}, iter(OTHER_COLOURS * 3)
    for arm in arms:
        out[arm] = FIXED_COLOURS.get(arm) or next(others)
    return out


def arm_label(arm: str, extraction: dict | None) -> str:
    """The arm's name with its full extraction options (seq2seq arms)."""
    if not extraction:
        return arm
    e = extraction
    clip = f", clip={e['clip']}" if e.get("clip") is not None else ""
    return f"{arm}: {e['magnitude']}, rematch={e['rematch']}, normalize={e['normalize']}{clip}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _fmt(x, pct=False, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


# ------------------------------------------------------------------------------------------- figures


def plot_win_rates(results: dict, path: Path) -> None:
    plt = _plt()
    splits = list(results["splits"])
    names = list(results["splits"][splits[0]]["win_rates"])
    fig, ax = plt.subplots(figsize=(9, 0.65 * len(names) * len(splits) + 1.6))
    y, labels = 0, []
    for split, colour in zip(splits, ("tab:blue", "tab:orange"), strict=False):
        for name in names:
            w = results["splits"][split]["win_rates"][name]
            if w["win_rate"] is not None:
                ax.errorbar(w["win_rate"], y, xerr=[[w["win_rate"] - w["ci_low"]], [w["ci_high"] - w["win_rate"]]],
                            fmt="o", color=colour, capsize=4)
            labels.append(f"{name} ({split})\nW/T/L {w['wins']}/{w['ties']}/{w['losses']}, N={w['n']}")
            y += 1
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (oracle judge, both orders); 95% two-stage bootstrap CI (seeds, then prompts)")
    ax.invert_yaxis()
    _save(fig, path)


def plot_refusals(results: dict, path: Path, colours: dict) -> None:
    plt = _plt()
    splits = list(results["splits"])
    arms = results["arms"]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 3.8), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        kinds = sorted({k for a in arms for k in results["splits"][split]["arms"][a]["refusal"]})
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            ref = results["splits"][split]["arms"][arm]["refusal"]
            ax.bar([j + i * width for j in range(len(kinds))], [ref.get(k) or 0 for k in kinds], width, label=arm,
                   color=colours[arm])
        ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(kinds))], kinds, rotation=10)
        ax.set_ylim(0, 1)
        ax.set_title(f"refusal rate by prompt kind ({split})")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def plot_lengths(results: dict, path: Path, colours: dict) -> None:
    plt = _plt()
    arms = results["arms"]
    res = results["splits"]["test"]["arms"]
    tasks = sorted(res[arms[0]]["length"])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / (len(arms) + 1)
    for i, arm in enumerate(arms):
        ax.bar([j + i * width for j in range(len(tasks))], [res[arm]["length"].get(t) or 0 for t in tasks], width,
               label=arm, color=colours[arm])
    ideal = res[arms[0]]["ideal_length"]
    ax.bar([j + len(arms) * width for j in range(len(tasks))], [ideal.get(t) or 0 for t in tasks], width,
           label="oracle ideal", color="black", alpha=0.35)
    ax.set_xticks([j + width * len(arms) / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("mean words per response (test)")
    ax.legend(fontsize=7)
    _save(fig, path)


def _series(runs, arm: str, key: str) -> list:
    """Each seed's per-step values of ``key`` for ``arm`` (NaN where a step lacks it), from the
    PPO run's metrics.jsonl; seeds without the arm or the key are left out."""
    import numpy as np

    out = []
    for r in runs:
        if arm not in r.ppo_runs:
            continue
        rows = [json.loads(x) for x in (Path(r.ppo_runs[arm]) / "metrics.jsonl").read_text().splitlines() if x]
        if rows and key in rows[0]:
            out.append(np.array([row.get(key) if row.get(key) is not None else np.nan for row in rows], dtype=float))
    return out


def _curves(runs, arm: str, key: str, smooth: int = 5):
    """(steps, mean over seeds, std over seeds) of a per-step metric, each seed smoothed by a
    trailing moving average of ``smooth`` steps."""
    import numpy as np

    series = []
    for v in _series(runs, arm, key):
        kernel = np.ones(smooth) / smooth
        padded = np.concatenate([np.full(smooth - 1, v[0]), v])
        series.append(np.convolve(padded, kernel, mode="valid"))
    if not series:
        return None
    n = min(len(s) for s in series)
    stack = np.stack([s[:n] for s in series])
    return np.arange(1, n + 1), stack.mean(0), stack.std(0)


def _windows(runs, arm: str, key: str, n_windows: int = 10):
    """(seeds, windows) array of a per-step metric, averaged over consecutive windows of steps
    (``n_windows`` of them, fewer for short runs); None when no seed logged ``key``."""
    import numpy as np

    series = _series(runs, arm, key)
    if not series:
        return None
    n = min(len(v) for v in series)
    width = max(1, n // n_windows)
    k = n // width
    return np.stack([np.nanmean(v[: k * width].reshape(k, width), axis=1) for v in series])


def plot_overoptimisation(runs, arms: list[str], path: Path, colours: dict) -> None:
    """Oracle quality of the rollouts over PPO steps, against KL(policy || reference) and against
    the arm's own RM reward (Gao et al. 2022, "Scaling laws for reward model overoptimization").

    The two right panels average each seed's steps over consecutive windows (10 per run), then
    take the mean and sd over seeds of each window, so each arm is one curve in step order. KL is
    drawn as sqrt(KL), the distance Gao et al. plot against (an arm that runs far keeps the others
    readable). RM rewards have each arm's own scale (a scalar head, token sums, probabilities): the x axis is the
    gain since the first window divided by the arm's largest gain, so 1 is where its own RM was
    most satisfied and every arm fits one axis."""
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    width = None
    for arm in arms:
        q = _curves(runs, arm, "oracle_quality")
        qw, klw, rww = (_windows(runs, arm, k) for k in ("oracle_quality", "kl", "rm_reward"))
        if q is None or qw is None or klw is None:
            continue
        c = colours[arm]
        steps, qm, qs = q
        axes[0].plot(steps, qm, color=c, label=arm)
        axes[0].fill_between(steps, qm - qs, qm + qs, color=c, alpha=0.15)
        width = max(1, len(steps) // 10)
        qwm, qws = qw.mean(0), qw.std(0)
        d = np.sqrt(np.clip(klw, 0, None))
        axes[1].errorbar(d.mean(0), qwm, yerr=qws, xerr=d.std(0), color=c, marker="o", ms=3, lw=1.2, elinewidth=0.6,
                         capsize=0, label=arm)
        if rww is not None:
            gain = rww.mean(0) - rww.mean(0)[0]
            scale = np.nanmax(np.abs(gain)) or 1.0
            axes[2].errorbar(gain / scale, qwm, yerr=qws, color=c, marker="o", ms=3, lw=1.2, elinewidth=0.6,
                             capsize=0, label=arm)
    axes[0].set(xlabel="PPO step", ylabel="oracle quality of rollouts",
                title="oracle quality over training (moving average of 5 steps)")
    axes[1].set(xlabel="sqrt(KL(policy || reference)), KL per response", ylabel="oracle quality",
                title="quality against KL (over-optimisation)")
    axes[2].set(xlabel="the arm's own RM reward: gain / its largest gain", ylabel="oracle quality",
                title="quality against the arm's own RM reward")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"mean over {len(runs)} seed(s), bars and bands +-1 sd over seeds"
                 + (f"; right panels: windows of {width} steps in step order" if width else ""), fontsize=9)
    _save(fig, path)


def plot_length_curves(runs, arms: list[str], tasks: list[str], path: Path, colours: dict) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        ideal_drawn = False
        for arm in arms:
            w = _curves(runs, arm, f"words_{task}")
            if w is None:
                continue
            ax.plot(w[0], w[1], color=colours[arm], label=arm)
            ax.fill_between(w[0], w[1] - w[2], w[1] + w[2], color=colours[arm], alpha=0.12)
            ideal = _curves(runs, arm, f"ideal_words_{task}")
            if ideal is not None and not ideal_drawn:
                ax.plot(ideal[0], ideal[1], color="black", ls="--", label="oracle ideal")
                ideal_drawn = True
        ax.set(title=f"{task}: words per rollout response", xlabel="PPO step")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def plot_calibration(results: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, colour in (("scalar", FIXED_COLOURS["scalar"]), ("seq2seq", FIXED_COLOURS["seq2seq"])):
        for seed, d in results["rm_eval"].items():
            cal = d[kind]["oracle"]["calibration"]
            ax.plot(range(1, len(cal) + 1), [b["accuracy"] for b in cal], "o-", color=colour, alpha=0.7,
                    label=f"{kind} RM" if seed == next(iter(results["rm_eval"])) else None)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set(xlabel="score-margin quartile (1 = smallest |margin|)", ylabel="accuracy vs the oracle", ylim=(0, 1),
           title="reward-model calibration on held-out pairs (one line per seed)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_sweep(sweep: list[dict], path: Path, colours: dict) -> None:
    plt = _plt()
    labels = [f"refusal {p['annotator']['refusal_bias']:g}\nlength {p['annotator']['length_bias']:g}" for p in sweep]
    x = list(range(len(sweep)))
    fig, axes = plt.subplots(1, 4, figsize=(19, 3.8))
    wr = [p["seq2seq vs scalar"] for p in sweep]
    axes[0].errorbar(x, [w["win_rate"] for w in wr], yerr=[[w["win_rate"] - w["ci_low"] for w in wr],
                                                          [w["ci_high"] - w["win_rate"] for w in wr]],
                     fmt="o-", color=colours["seq2seq"], capsize=4)
    axes[0].axhline(0.5, color="grey", ls="--", lw=1)
    axes[0].set(title="seq2seq vs scalar win rate (test)", ylim=(0, 1))
    for arm in ("sft", "scalar", "seq2seq"):
        axes[1].plot(x, [p["arms"][arm]["refusal_risky_benign"] for p in sweep], "o-", color=colours[arm], label=arm)
        axes[2].plot(x, [p["arms"][arm]["words_summarize"] for p in sweep], "o-", color=colours[arm], label=arm)
    axes[2].plot(x, [p["arms"]["sft"]["ideal_words_summarize"] for p in sweep], "k--", label="oracle ideal")
    for kind in ("scalar", "seq2seq"):
        if all(kind in p.get("rm_accuracy", {}) for p in sweep):
            for judge, style in (("oracle", "o-"), ("annotator", "s:")):
                axes[3].plot(x, [p["rm_accuracy"][kind][judge] for p in sweep], style, color=colours[kind],
                             label=f"{kind} RM vs {'the oracle' if judge == 'oracle' else 'its annotator'}")
    axes[3].axhline(0.5, color="grey", ls="--", lw=1)
    axes[3].set(title="RM accuracy on held-out pairs", ylim=(0, 1))
    axes[3].legend(fontsize=7)
    axes[1].set(title="refusal rate on risky-looking benign prompts", ylim=(0, 1))
    axes[2].set(title="words per summary")
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_xlabel("annotator bias")
    axes[1].legend(fontsize=7)
    _save(fig, path)


# ------------------------------------------------------------------------------------------- samples


def sample_rows(results: dict, runs, per_task: int = 2, max_new_tokens: int = 64) -> list[dict]:
    """Side-by-side test responses of the first seed (same prompts for every arm) with their
    oracle scores, and the seq2seq RM's own rewrite of the seq2seq arm's response."""
    from ..rewards import load_reward_model
    from ..tasks import get_task

    run = runs[0]
    info = {row["prompt"]: row for row in run.prompts["test"]}
    arms = [a for a in ("sft", "scalar", "seq2seq") if a in run.responses]
    by_task: dict[str, list[int]] = {}
    for i, row in enumerate(run.responses[arms[0]]["test"]):
        by_task.setdefault(info[row["prompt"]]["task"], []).append(i)
    picked = [i for idx in by_task.values() for i in idx[:: max(len(idx) // per_task, 1)][:per_task]]
    rows = []
    for i in picked:
        prompt = run.responses[arms[0]]["test"][i]["prompt"]
        task = get_task(info[prompt]["task"])
        row = {"task": info[prompt]["task"], "kind": info[prompt]["kind"], "prompt": prompt, "arms": {}}
        for arm in arms:
            text = run.responses[arm]["test"][i]["response"]
            row["arms"][arm] = {"response": text, "oracle": task.score(prompt, text)}
        rows.append(row)
    rm_dir = run.dir / "rm-seq2seq"
    if "seq2seq" in arms and rm_dir.is_dir():
        rm = load_reward_model(rm_dir)
        rewrites = rm.rewrite([r["prompt"] for r in rows], [r["arms"]["seq2seq"]["response"] for r in rows],
                              max_new_tokens=max_new_tokens)
        for r, text in zip(rows, rewrites, strict=True):
            r["rm_rewrite"] = text
    return rows


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


# ------------------------------------------------------------------------------------------- HTML


def _table(headers, rows) -> str:
    h = "".join(f"<th>{ESC(str(x))}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{ESC(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _wr_rows(win_rates: dict) -> list[list]:
    rows = []
    for name, w in win_rates.items():
        rows.append([name, "all seeds", _fmt(w["win_rate"]), f"[{_fmt(w['ci_low'])}, {_fmt(w['ci_high'])}]",
                     f"{w['wins']} / {w['ties']} / {w['losses']}", w["invalid"], w["n"]])
        for seed, s in w["by_seed"].items():
            rows.append(["", f"seed {seed}", _fmt(s["win_rate"]), f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]",
                         f"{s['wins']} / {s['ties']} / {s['losses']}", s["invalid"], s["n"]])
    return rows


WR_HEADERS = ["comparison", "seeds", "win rate", "95% CI", "wins / ties / losses", "invalid", "N"]


def write_report(results: dict, runs, out: Path) -> Path:
    """Write every figure and report.html; adds ``samples`` to ``results``. Returns the page."""
    arms = results["arms"]
    colours = arm_colours(arms)
    labels = {a: arm_label(a, results.get("extraction", {}).get(a)) for a in arms}
    tasks = results["config"]["tasks"]
    plot_win_rates(results, out / "win_rates.png")
    plot_refusals(results, out / "refusals.png", colours)
    plot_lengths(results, out / "lengths.png", colours)
    ppo_arms = [a for a in arms if a != "sft"]
    plot_overoptimisation(runs, ppo_arms, out / "overoptimisation.png", colours)
    plot_length_curves(runs, ppo_arms, tasks, out / "length_curves.png", colours)
    plot_calibration(results, out / "rm_calibration.png")
    if results.get("sweep"):
        plot_sweep(results["sweep"], out / "bias_sweep.png", colours)
    results["samples"] = sample_rows(results, runs)
    heat = write_token_heatmap(runs, out)
    cfg = results["config"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>seq2seq-rm experiment</title>",
        "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#eee}td:first-child{text-align:left}img{max-width:100%}"
        "iframe{width:100%;height:520px;border:1px solid #ccc}.note{color:#555;font-size:90%}"
        ".warn{background:#fff3cd;border:1px solid #e0c36b;padding:8px 12px}.sample td{text-align:left;"
        "vertical-align:top;max-width:320px}</style></head><body>",
        "<h1>Seq2seq RM vs scalar RM: PPO on the bundled tasks</h1>",
        f"<p class='note'>Commit {ESC(str(results.get('commit')))}; tasks {ESC(', '.join(tasks))}; seeds "
        f"{ESC(str(cfg['seeds']))}; " + _sft_note(cfg) + "; "
        f"annotator biases {ESC(json.dumps(cfg['annotator']))}; total time {results['total_seconds']:.0f} s. "
        "Judge: the tasks' programmatic oracles, every pair in both orders (a win only when both orders agree); "
        "95% intervals from a two-stage bootstrap (seeds, then prompts within each seed). The full config is in "
        "report.json.</p>",
        "<p class='note'>Arms: " + "; ".join(
            f"<span style='color:{colours[a]}'>&#9632;</span> {ESC(labels[a])}" for a in arms) + "</p>",
    ]
    if results.get("warnings"):
        parts.append("<div class='warn'><b>Warnings</b><ul>" + "".join(
            f"<li>{ESC(w)}</li>" for w in results["warnings"]) + "</ul></div>")
    parts.append("<h2>Win rates</h2><img src='win_rates.png' alt='win rates'>")
    for split, res in results["splits"].items():
        parts.append(f"<h3>{ESC(split)} prompts</h3>" + _table(WR_HEADERS, _wr_rows(res["win_rates"])))
        by_task = [[task, name, _fmt(w["win_rate"]), f"[{_fmt(w['ci_low'])}, {_fmt(w['ci_high'])}]",
                    f"{w['wins']} / {w['ties']} / {w['losses']}", w["n"]]
                   for task, d in res["by_task"].items() for name, w in d.items()]
        parts.append(_table(["task", "comparison", "win rate", "95% CI", "W / T / L", "N"], by_task))
    parts.append("<h2>Over-optimisation</h2><p class='note'>The oracle's score of every PPO step's rollouts "
                 "(sampled, training prompts) against the policy's KL from the SFT reference and against the "
                 "arm's own RM reward: a curve that rises, then falls while the RM reward keeps rising, is the "
                 "RM being over-optimised.</p><img src='overoptimisation.png' alt='over-optimisation curves'>")
    parts.append("<h2>Length</h2><img src='length_curves.png' alt='length curves'><img src='lengths.png' alt='lengths'>")
    for split, res in results["splits"].items():
        rows = [[labels[arm], m["n"]] + [f"{_fmt(m['length'].get(t), digits=1)} (ideal "
                                         f"{_fmt(m['ideal_length'].get(t), digits=1)})" for t in tasks]
                + [_fmt(m["quality"].get(t)) for t in tasks] for arm, m in res["arms"].items()]
        if res.get("reference"):
            m = res["reference"]
            rows.append(["reference responses", m["n"]] + [f"{_fmt(m['length'].get(t), digits=1)}" for t in tasks]
                        + [_fmt(m["quality"].get(t)) for t in tasks])
        parts.append(f"<h3>mean words (ideal) and mean oracle quality ({ESC(split)}, mean over seeds)</h3>"
                     + _table(["arm", "N per seed"] + [f"words: {t}" for t in tasks]
                              + [f"quality: {t}" for t in tasks], rows))
        if res.get("sft_share_of_reference"):
            parts.append("<p class='note'>SFT's oracle quality as a share of the reference responses': "
                         + ESC(_shares(res["sft_share_of_reference"])) + "</p>")
    parts.append("<h2>Refusal-to-response</h2><img src='refusals.png' alt='refusal rates'>")
    for split, res in results["splits"].items():
        kinds = sorted({k for a in res["arms"].values() for k in a["refusal"]})
        rows = [[labels[arm]] + [_fmt(m["refusal"].get(k), pct=True) for k in kinds] for arm, m in res["arms"].items()]
        parts.append(f"<h3>refusal rate by prompt kind ({ESC(split)})</h3>" + _table(["arm"] + kinds, rows))
        cats = sorted({c for a in res["arms"].values() for c in a["unsafe_by_category"]})
        if cats:
            rows = [[labels[arm]] + [_fmt(m["unsafe_by_category"].get(c), pct=True) for c in cats]
                    for arm, m in res["arms"].items()]
            parts.append(f"<h3>unsafe rate per hazard category ({ESC(split)})</h3>" + _table(["arm"] + cats, rows))
    if results.get("sweep"):
        parts.append("<h2>Bias sweep</h2><p class='note'>The same experiment (main arms) with the annotator's "
                     "refusal and length biases set as below: does the scalar RM's policy follow the biases, and "
                     "does the seq2seq RM's resist them?</p><img src='bias_sweep.png' alt='bias sweep'>")
        rows = []
        for p in results["sweep"]:
            w = p["seq2seq vs scalar"]
            rows.append([json.dumps(p["annotator"]), str(p["seeds"]), _fmt(w["win_rate"]),
                         f"[{_fmt(w['ci_low'])}, {_fmt(w['ci_high'])}]", w["n"]]
                        + [_fmt(p["arms"][a]["refusal_risky_benign"], pct=True) for a in ("sft", "scalar", "seq2seq")]
                        + [_fmt(p["arms"][a]["words_summarize"], digits=1) for a in ("sft", "scalar", "seq2seq")]
                        + [_fmt(p.get("rm_accuracy", {}).get(k, {}).get("oracle")) for k in ("scalar", "seq2seq")])
        parts.append(_table(["annotator", "seeds", "seq2seq vs scalar", "95% CI", "N", "refusal risky (sft)",
                             "(scalar)", "(seq2seq)", "summary words (sft)", "(scalar)", "(seq2seq)",
                             "scalar RM vs oracle", "seq2seq RM vs oracle"], rows))
    parts.append("<h2>Reward models on held-out pairs</h2><img src='rm_calibration.png' alt='RM calibration'>")
    tasks = _rm_eval_tasks(results)
    rows = [[seed, kind, _fmt(m["oracle"]["accuracy"]), _fmt(m["annotator"]["accuracy"]), m["oracle"]["pairs"]]
            + [_group_acc(m["oracle"], t) for t in tasks]
            for seed, d in results["rm_eval"].items() for kind, m in d.items()]
    parts.append(_table(["seed", "RM", "accuracy vs the oracle", "accuracy vs the annotator's labels", "N pairs"]
                        + [f"vs the oracle: {t}" for t in tasks], rows))
    pair_rows = _pair_kind_rows(results)
    if pair_rows:
        parts.append("<p class='note'>Accuracy against the oracle by kind of comparison (the oracle's better kind "
                     "first), pooled over seeds: which judgements each RM has learnt.</p>")
        parts.append(_table(["comparison", "N pairs", "scalar RM", "seq2seq RM"], pair_rows))
    parts.append("<h2>Side by side</h2><p class='note'>Greedy test responses of the first seed, each with its "
                 "oracle score; the last column is the seq2seq RM's own rewrite of the seq2seq arm's response "
                 "(what its token rewards compare against).</p>")
    head = "".join(f"<th>{ESC(a)}</th>" for a in results["samples"][0]["arms"]) if results["samples"] else ""
    body = ""
    for s in results["samples"]:
        cells = "".join(f"<td>{ESC(v['response'])}<br><i>oracle {v['oracle']:.2f}</i></td>" for v in s["arms"].values())
        body += (f"<tr><td>{ESC(s['task'])} / {ESC(s['kind'])}<br>{ESC(str(s['prompt'])[:400])}</td>{cells}"
                 f"<td>{ESC(s.get('rm_rewrite', '–'))}</td></tr>")
    parts.append(f"<table class='sample'><tr><th>prompt</th>{head}<th>seq2seq RM rewrite</th></tr>{body}</table>")
    if heat is not None:
        parts.append("<h2>Token rewards</h2><p class='note'>Green: the seq2seq RM would have written the token; "
                     "red: it would have written another (hover for which).</p>"
                     "<iframe src='token_rewards.html' title='token rewards'></iframe>")
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def markdown_summary(results: dict) -> str:
    """The headline numbers as markdown (report.md): warnings, win rates with CIs and a row per
    seed, per-arm quality, length and refusal, RM accuracy, the bias sweep."""
    lines = []
    if results.get("warnings"):
        lines += ["**Warnings**", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    for split, res in results["splits"].items():
        lines += [f"**{split}** prompts (win rate: mean over seeds; 95% CI: two-stage bootstrap, seeds then prompts)",
                  "", "| " + " | ".join(WR_HEADERS) + " |", "|---" * len(WR_HEADERS) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in _wr_rows(res["win_rates"])]
        lines.append("")
        arms = res["arms"]
        tasks = sorted(next(iter(arms.values()))["quality"])
        kinds = sorted({k for m in arms.values() for k in m["refusal"]})
        lines += ["| arm | N/seed | " + " | ".join(f"quality {t}" for t in tasks) + " | "
                  + " | ".join(f"words {t} (ideal)" for t in tasks) + " | "
                  + " | ".join(f"refusal {k}" for k in kinds) + " |",
                  "|---" * (2 + 2 * len(tasks) + len(kinds)) + "|"]
        for arm, m in arms.items():
            q = " | ".join(_fmt(m["quality"].get(t)) for t in tasks)
            ln = " | ".join(f"{_fmt(m['length'].get(t), digits=1)} ({_fmt(m['ideal_length'].get(t), digits=1)})"
                            for t in tasks)
            rf = " | ".join(_fmt(m["refusal"].get(k), pct=True) for k in kinds)
            lines.append(f"| {arm} | {_fmt(m['n'], digits=0)} | {q} | {ln} | {rf} |")
        if res.get("reference"):
            m = res["reference"]
            q = " | ".join(_fmt(m["quality"].get(t)) for t in tasks)
            ln = " | ".join(_fmt(m["length"].get(t), digits=1) for t in tasks)
            lines.append(f"| reference responses | {_fmt(m['n'], digits=0)} | {q} | {ln} |" + " |" * len(kinds))
        if res.get("sft_share_of_reference"):
            lines += ["", f"SFT's oracle quality as a share of the reference responses': "
                          f"{_shares(res['sft_share_of_reference'])}"]
        lines.append("")
    tasks = _rm_eval_tasks(results)
    lines += ["| seed | RM | accuracy vs oracle | accuracy vs annotator | N |"
              + "".join(f" vs oracle: {t} |" for t in tasks), "|---" * (5 + len(tasks)) + "|"]
    for seed, d in results["rm_eval"].items():
        for kind, m in d.items():
            lines.append(f"| {seed} | {kind} | {_fmt(m['oracle']['accuracy'])} | {_fmt(m['annotator']['accuracy'])} "
                         f"| {m['oracle']['pairs']} |" + "".join(f" {_group_acc(m['oracle'], t)} |" for t in tasks))
    lines.append("")
    pair_rows = _pair_kind_rows(results)
    if pair_rows:
        lines += ["| RM accuracy vs oracle by comparison (pooled over seeds) | N | scalar | seq2seq |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(str(c) for c in row)} |" for row in pair_rows] + [""]
    for p in results.get("sweep", []):
        w = p["seq2seq vs scalar"]
        lines.append(f"- sweep {json.dumps(p['annotator'])}: seq2seq vs scalar {_fmt(w['win_rate'])} "
                     f"[{_fmt(w['ci_low'])}, {_fmt(w['ci_high'])}] (N={w['n']}); refusal on risky benign "
                     + ", ".join(f"{a} {_fmt(p['arms'][a]['refusal_risky_benign'], pct=True)}"
                                 for a in ("sft", "scalar", "seq2seq"))
                     + "; summary words " + ", ".join(f"{a} {_fmt(p['arms'][a]['words_summarize'], digits=1)}"
                                                      for a in ("sft", "scalar", "seq2seq"))
                     + "; RM accuracy vs oracle / vs annotator " + ", ".join(
                         f"{k} {_fmt(v['oracle'])} / {_fmt(v['annotator'])}" for k, v in p.get("rm_accuracy", {}).items()))
    return "\n".join(lines) + "\n"


def _sft_note(cfg: dict) -> str:
    """Where the SFT policy came from, for the report's header."""
    if cfg.get("sft_policy"):
        return f"SFT policy given (sft_policy: {ESC(cfg['sft_policy'])}), shared by all seeds"
    return (f"model {ESC(cfg['base_model'] or cfg['size'])}; SFT on {ESC(cfg['sft_data'])} demonstrations "
            f"({'shared by all seeds' if cfg['shared_sft'] else 'one per seed'})")


def _rm_eval_tasks(results: dict) -> list[str]:
    """The tasks the RM accuracies are broken down by (none for runs that predate the breakdown)."""
    return sorted({t for d in results["rm_eval"].values() for m in d.values()
                   for t in m["oracle"].get("by", {}).get("task", {})})


def _pair_kind_rows(results: dict) -> list[list]:
    """``[comparison, N, scalar accuracy, seq2seq accuracy]`` per kind of held-out comparison,
    pooled over seeds (each seed's accuracy weighted by its pairs)."""
    pooled: dict = {}
    for d in results["rm_eval"].values():
        for kind, m in d.items():
            for label, g in m["oracle"].get("by", {}).get("pair", {}).items():
                acc = pooled.setdefault(label, {}).setdefault(kind, [0.0, 0])
                acc[0] += g["accuracy"] * g["pairs"]
                acc[1] += g["pairs"]
    rows = []
    for label in sorted(pooled):
        k = pooled[label]
        n = next(iter(k.values()))[1]
        rows.append([label, n] + [_fmt(k[kind][0] / k[kind][1]) if kind in k else "–" for kind in ("scalar", "seq2seq")])
    return rows


def _group_acc(m: dict, task: str) -> str:
    g = m.get("by", {}).get("task", {}).get(task)
    return f"{_fmt(g['accuracy'])} (N={g['pairs']})" if g else "–"


def _shares(share: dict) -> str:
    return ", ".join(f"{t} {_fmt(v)}" for t, v in sorted(share.items()))


def headline(results: dict, html: Path | None = None) -> str:
    """The few numbers a run ends with on the terminal: the main comparisons on test and OOD
    prompts (win rate, 95% CI, W/T/L, N), the RMs' accuracy against the oracle, the warnings."""
    lines = ["", "Headline (oracle judge, both orders; win rate: mean over seeds, 95% CI: seeds then prompts)"]
    for split, res in results["splits"].items():
        for name in ("seq2seq vs scalar", "seq2seq vs sft", "scalar vs sft"):
            w = res["win_rates"].get(name)
            if w:
                lines.append(f"  {split:4s} {name:18s} {_fmt(w['win_rate'])} [{_fmt(w['ci_low'])}, {_fmt(w['ci_high'])}]"
                             f"  W/T/L {w['wins']}/{w['ties']}/{w['losses']}  N={w['n']}")
    share = results["splits"].get("test", {}).get("sft_share_of_reference")
    if share:
        lines.append(f"  SFT quality / reference quality (test): {_shares(share)}")
    accs = {kind: [d[kind]["oracle"]["accuracy"] for d in results["rm_eval"].values()] for kind in ("scalar", "seq2seq")}
    lines.append("  RM accuracy vs the oracle on held-out pairs: "
                 + ", ".join(f"{k} {_fmt(sum(v) / len(v))}" for k, v in accs.items() if v))
    for task in _rm_eval_tasks(results):
        per = {kind: [d[kind]["oracle"]["by"]["task"][task]["accuracy"] for d in results["rm_eval"].values()
                      if task in d[kind]["oracle"].get("by", {}).get("task", {})] for kind in ("scalar", "seq2seq")}
        lines.append(f"    {task}: " + ", ".join(f"{k} {_fmt(sum(v) / len(v))}" for k, v in per.items() if v))
    if results.get("warnings"):
        lines.append(f"  {len(results['warnings'])} warning(s), e.g.: {results['warnings'][0]}")
    if html is not None:
        lines.append(f"  report: {html}")
    return "\n".join(lines)
