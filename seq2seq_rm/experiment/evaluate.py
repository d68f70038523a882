"""Judging the experiment's responses with the tasks' oracles, pooled over seeds.

Win rates use the both-orders protocol of ``eval/winrate.py``; refusal, unsafe and length
figures use the same functions as ``seq2seq-rm eval`` (``eval/metrics.py``, ``eval/safety.py``).
"""

from __future__ import annotations

import statistics

from ..eval.metrics import length_stats, refusal_rates
from ..eval.safety import is_refusal, unsafe_rates
from .config import ExperimentConfig


def comparisons(arms: list[str]) -> list[tuple[str, str]]:
    """The pairs the report compares: seq2seq vs scalar, each vs SFT, every ablation arm vs scalar."""
    pairs = [("seq2seq", "scalar"), ("seq2seq", "sft"), ("scalar", "sft")]
    pairs += [(a, "scalar") for a in arms if a.startswith("seq2seq[")]
    return [(a, b) for a, b in pairs if a in arms and b in arms]


def evaluate_runs(cfg: ExperimentConfig, runs: list) -> dict:
    """Oracle-judged metrics per split and task, pooled over seeds."""
    from ..eval.judges import OracleJudge
    from ..eval.winrate import pairwise_winrate
    from ..tasks import get_task

    arms = list(runs[0].responses)
    result = {"arms": arms, "splits": {}}
    tasks = {name: get_task(name) for name in cfg.tasks}
    for split in ("test", "ood"):
        # prompt -> task, kind, meta (pooled over seeds: prompt texts may repeat across seeds)
        info = {row["prompt"]: row for r in runs for row in r.prompts[split]}

        def score(prompt, response, info=info):
            return tasks[info[prompt]["task"]].score(prompt, response)

        judge = OracleJudge(score, name="oracle")
        split_res = {"win_rates": {}, "by_task": {}, "arms": {}}
        for a, b in comparisons(arms):
            rows_a = [x for r in runs for x in r.responses[a][split]]
            rows_b = [x for r in runs for x in r.responses[b][split]]
            wr = pairwise_winrate(rows_a, rows_b, judge, names=(a, b), n_boot=cfg.n_boot)
            split_res["win_rates"][f"{a} vs {b}"] = wr.summary()
            for name in cfg.tasks:
                ta = [x for x in rows_a if info[x["prompt"]]["task"] == name]
                tb = [x for x in rows_b if info[x["prompt"]]["task"] == name]
                if ta:
                    w = pairwise_winrate(ta, tb, judge, names=(a, b), n_boot=cfg.n_boot)
                    split_res["by_task"].setdefault(name, {})[f"{a} vs {b}"] = w.summary()
        for arm in arms:
            rows = [x for r in runs for x in r.responses[arm][split]]
            split_res["arms"][arm] = arm_metrics(rows, info, tasks)
        result["splits"][split] = split_res
    return result


def arm_metrics(rows: list[dict], info: dict, tasks: dict) -> dict:
    """Mean oracle score, words against the oracle's ideal, refusal rate by prompt kind and
    unsafe rate by hazard category (safety task) for one arm's responses."""
    out = {"quality": {}, "length": {}, "ideal_length": {}, "refusal": {}, "unsafe_by_category": {}}
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
