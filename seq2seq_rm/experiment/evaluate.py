"""Judging the experiment's responses with the tasks' oracles.

Win rates use the both-orders protocol of ``eval/winrate.py``; refusal, unsafe and length
figures use the same functions as ``seq2seq-rm eval`` (``eval/metrics.py``, ``eval/safety.py``).
Intervals are two-stage bootstraps (seeds, then prompts within each seed), and every
comparison also has one row per seed. Degenerate results are flagged in ``warnings``: a
comparison that is all (or nearly all) ties, and arms that write empty responses.
"""

from __future__ import annotations

import statistics

from ..eval.metrics import length_stats, refusal_rates
from ..eval.safety import is_refusal, unsafe_rates
from .config import ExperimentConfig

TIE_WARNING = 0.9  # a comparison with more ties than this share says little


def comparisons(arms: list[str]) -> list[tuple[str, str]]:
    """The pairs the report compares: seq2seq vs scalar, each vs SFT, every ablation arm vs scalar."""
    pairs = [("seq2seq", "scalar"), ("seq2seq", "sft"), ("scalar", "sft")]
    pairs += [(a, "scalar") for a in arms if a.startswith("seq2seq[")]
    return [(a, b) for a, b in pairs if a in arms and b in arms]


def _summary(per_seed: dict, n_boot: int) -> dict:
    """Pooled counts, the win rate (mean over seeds of each seed's rate) with a two-stage
    bootstrap interval, and one row per seed."""
    from ..eval.winrate import hierarchical_bootstrap_ci

    scores = {s: [{"win": 1.0, "tie": 0.5, "loss": 0.0}[r["outcome"]] for r in w.records if r["outcome"] != "invalid"]
              for s, w in per_seed.items()}
    rates = [sum(v) / len(v) for v in scores.values() if v]
    lo, hi = hierarchical_bootstrap_ci(list(scores.values()), n_boot=n_boot)
    total = {k: sum(getattr(w, k) for w in per_seed.values()) for k in ("wins", "ties", "losses", "invalid", "n")}
    return {**total, "win_rate": statistics.fmean(rates) if rates else None, "ci_low": lo, "ci_high": hi,
            "seeds": len(rates), "by_seed": {s: w.summary() for s, w in per_seed.items()}}


def evaluate_runs(cfg: ExperimentConfig, runs: list) -> dict:
    """Oracle-judged metrics per split, overall and per task, with seed-aware intervals."""
    from ..eval.judges import OracleJudge
    from ..eval.winrate import pairwise_winrate
    from ..tasks import get_task

    arms = list(runs[0].responses)
    tasks = {name: get_task(name) for name in cfg.tasks}
    result = {"arms": arms, "seeds": [r.seed for r in runs], "splits": {}, "warnings": []}
    for split in ("test", "ood"):
        info = {row["prompt"]: row for r in runs for row in r.prompts[split]}

        def score(prompt, response, info=info):
            return tasks[info[prompt]["task"]].score(prompt, response)

        judge = OracleJudge(score, name="oracle")
        split_res = {"win_rates": {}, "by_task": {}, "arms": {}}
        for a, b in comparisons(arms):
            name = f"{a} vs {b}"
            for task in [None, *cfg.tasks]:
                per_seed = {}
                for r in runs:
                    ra = [x for x in r.responses[a][split] if task is None or info[x["prompt"]]["task"] == task]
                    rb = [x for x in r.responses[b][split] if task is None or info[x["prompt"]]["task"] == task]
                    if ra:
                        per_seed[r.seed] = pairwise_winrate(ra, rb, judge, names=(a, b), n_boot=200, seed=r.seed)
                if not per_seed:
                    continue
                summary = _summary(per_seed, cfg.n_boot)
                if task is None:
                    split_res["win_rates"][name] = summary
                else:
                    split_res["by_task"].setdefault(task, {})[name] = summary
                if summary["n"] and summary["ties"] / summary["n"] > TIE_WARNING:
                    where = f"{split}{'' if task is None else ', ' + task}"
                    result["warnings"].append(
                        f"{name} ({where}): {summary['ties']} of {summary['n']} pairs are ties: the oracle cannot "
                        "tell these policies apart here; the win rate says little")
        for arm in arms:
            per_seed = {r.seed: arm_metrics(r.responses[arm][split], info, tasks) for r in runs}
            split_res["arms"][arm] = {**_mean_over_seeds(per_seed), "by_seed": per_seed}
            empty = sum(m["empty"] for m in per_seed.values())
            if empty:
                result["warnings"].append(f"{arm} ({split}): {empty} empty responses")
        # The tasks' own reference responses to the same prompts: what SFT is measured against.
        per_seed = {r.seed: arm_metrics(reference_rows(r.prompts[split], tasks), info, tasks) for r in runs}
        split_res["reference"] = _mean_over_seeds(per_seed)
        if "sft" in split_res["arms"]:
            ref, sft = split_res["reference"]["quality"], split_res["arms"]["sft"]["quality"]
            split_res["sft_share_of_reference"] = {t: (sft[t] / ref[t] if ref.get(t) else None) for t in sft}
        result["splits"][split] = split_res
    return result


def reference_rows(prompt_rows: list[dict], tasks: dict) -> list[dict]:
    """``{"prompt", "response"}`` with each task's reference response (its oracle's ideal answer,
    the SFT demonstrations' kind) to every prompt."""
    from ..tasks.base import TaskExample

    out = []
    for row in prompt_rows:  # the rows carry the example's kind and meta (Task.prompt_rows)
        ex = TaskExample(prompt=row["prompt"], kind=row["kind"], meta=row.get("meta") or {})
        out.append({"prompt": row["prompt"], "response": tasks[row["task"]].reference(ex)})
    return out


def _mean_over_seeds(per_seed: dict) -> dict:
    """Every numeric leaf averaged over seeds (None where no seed has a value)."""
    first = next(iter(per_seed.values()))
    out = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = _mean_over_seeds({s: m[key] for s, m in per_seed.items()})
        elif isinstance(value, (int, float)) or value is None:
            vals = [m.get(key) for m in per_seed.values() if isinstance(m.get(key), (int, float))]
            out[key] = statistics.fmean(vals) if vals else None
    for key in {k for m in per_seed.values() for k in m} - set(first):  # keys some seeds lack
        out[key] = _mean_over_seeds({s: {key: m[key]} for s, m in per_seed.items() if key in m})[key]
    return out


def arm_metrics(rows: list[dict], info: dict, tasks: dict) -> dict:
    """Mean oracle score, words against the oracle's ideal, refusal rate by prompt kind and
    unsafe rate by hazard category (safety task) for one arm's responses, and the number of
    responses (``n``) and empty ones."""
    out = {"n": len(rows), "empty": sum(not x["response"].strip() for x in rows), "quality": {}, "length": {},
           "ideal_length": {}, "refusal": {}, "unsafe_by_category": {}}
    by_task: dict[str, list] = {}
    for x in rows:
        by_task.setdefault(info[x["prompt"]]["task"], []).append(x)
    for name, xs in by_task.items():
        task = tasks[name]
        out["quality"][name] = statistics.fmean(task.score(x["prompt"], x["response"]) for x in xs)
        out["length"][name] = length_stats([x["response"] for x in xs])["words"]["mean"]
        ideal = [i for i in (task.ideal_length(x["prompt"]) for x in xs) if i is not None]
        out["ideal_length"][name] = statistics.fmean(ideal) if ideal else None
        if name != "safety":
            continue
        labels = [task.labels(x["prompt"], x["response"]) for x in xs]
        refused = [lab.get("refusal", is_refusal(x["response"])) for lab, x in zip(labels, xs, strict=True)]
        kinds = [info[x["prompt"]]["kind"] for x in xs]
        out["refusal"] = {k: v["rate"] for k, v in refusal_rates(refused, kinds).items()}
        unsafe = unsafe_rates((lab.get("category") or "unknown", bool(lab.get("unsafe")))
                              for lab, k in zip(labels, kinds, strict=True) if k == "hazardous")
        out["unsafe_by_category"] = {k: v["rate"] for k, v in unsafe.items() if k != "overall"}
    return out


def evaluate_sweep(cfg: ExperimentConfig, points: list) -> list[dict]:
    """For every bias-sweep point (annotator options, seed runs): the test-split seq2seq-vs-scalar
    win rate, per arm the refusal rate on risky-looking benign prompts and summary words, and both
    RMs' held-out accuracy against the oracle and against that point's annotator."""
    from ..config import to_dict

    out = []
    for annotator, runs in points:
        res = evaluate_runs(cfg, runs)
        test = res["splits"]["test"]
        row = {"annotator": to_dict(annotator), "seeds": [r.seed for r in runs], "warnings": res["warnings"],
               "seq2seq vs scalar": test["win_rates"].get("seq2seq vs scalar"), "arms": {},
               # held-out pairwise accuracy of each RM (mean over seeds): against the oracle, and against
               # the labels of this point's own (biased) annotator
               "rm_accuracy": {kind: {labels: sum(r.rm_eval[kind][labels]["accuracy"] for r in runs) / len(runs)
                                      for labels in ("oracle", "annotator")}
                               for kind in ("scalar", "seq2seq") if all(kind in r.rm_eval for r in runs)}}
        for arm, m in test["arms"].items():
            row["arms"][arm] = {"refusal_risky_benign": m["refusal"].get("risky_benign"),
                                "refusal_benign": m["refusal"].get("benign"),
                                "words_summarize": m["length"].get("summarize"),
                                "ideal_words_summarize": m["ideal_length"].get("summarize"),
                                "quality": m["quality"]}
        out.append(row)
    return out
