"""The paper's experiment on the bundled offline tasks: ``seq2seq-rm demo`` and ``experiment``.

For each seed, with everything else equal between the two arms (same data, same SFT
policy, same PPO settings; the baseline is never weakened):

    tasks -> data (train pairs from the simulated annotator, SFT rows, prompts)
          -> tiny tokenizer + model built from the corpus
          -> SFT on the chosen responses
          -> scalar RM (Bradley-Terry) and seq2seq RM (Correction + Identity), both from SFT
          -> PPO with each RM  [+ ablation: the seq2seq RM under other extraction options]
          -> greedy responses on held-out test and out-of-distribution prompts
          -> oracle judgements: pairwise win rates (both orders, bootstrap CI), refusal
             rates on benign vs hazardous prompts, unsafe rate per hazard category, length
             against the oracle's ideal, mean oracle quality
          -> report.json + report.html (with PNG plots)

``demo`` is one seed on all tasks within ~10 minutes on two CPU cores; ``experiment``
runs several seeds and the extraction ablation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ExtractionConfig, TrainOptions, opt, to_dict
from .io import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class PPOOptions:
    """The PPO settings shared by every arm (see rl/ppo.py PPOConfig for their meaning)."""

    steps: int = opt(40, "PPO iterations per arm")
    batch_size: int = opt(16, "prompts per rollout batch")
    mini_batch_size: int = opt(8, "sequences per optimiser step")
    ppo_epochs: int = opt(2, "passes over each rollout batch")
    actor_lr: float = opt(1e-4, "actor learning rate (tiny models from scratch need more than 1e-5)")
    critic_lr: float = opt(1e-4, "critic learning rate")
    kl_coef: float = opt(0.1, "KL penalty weight")
    max_new_tokens: int = opt(48, "rollout length limit")
    temperature: float = opt(1.0, "rollout sampling temperature")


@dataclass
class ExperimentConfig:
    tasks: list = opt(["safety", "summarize", "instruct"], "bundled tasks to run")
    seeds: list = opt([0], "seeds; each seed reruns everything (data, models, PPO)")
    size: str = opt("tiny", "tiny-model size: tiny | small (ignored when base_model is set)")
    base_model: str = opt("", "start from this model instead of a tiny one: a folder, or a .gguf file (converted)")
    train_pairs: int = opt(400, "training preference pairs per task")
    ppo_prompts: int = opt(300, "training prompts per task for PPO")
    test_prompts: int = opt(50, "held-out test prompts per task")
    ood_prompts: int = opt(50, "out-of-distribution prompts per task")
    sft: TrainOptions = opt(TrainOptions(epochs=10.0, lr=3e-3, batch_size=16, max_length=320), "SFT options")
    rm: TrainOptions = opt(TrainOptions(epochs=5.0, lr=3e-3, batch_size=16, max_length=320), "RM options (both kinds)")
    ppo: PPOOptions = opt(PPOOptions(), "PPO options (all arms)")
    extraction: ExtractionConfig = opt(ExtractionConfig(), "token-reward options of the main seq2seq arm")
    ablation: list = opt([], "extra seq2seq arms: dicts of extraction overrides, e.g. [{magnitude: prob}]")
    eval_max_new_tokens: int = opt(64, "response length limit when generating for evaluation (greedy)")
    n_boot: int = opt(2000, "bootstrap resamples for confidence intervals")


def demo_config() -> ExperimentConfig:
    return ExperimentConfig()


def experiment_config(seeds: int = 3) -> ExperimentConfig:
    return ExperimentConfig(
        seeds=list(range(seeds)),
        ablation=[
            {"magnitude": "prob"},
            {"magnitude": "logratio"},
            {"rematch": "positive"},  # the paper's literal reading
            {"normalize": "mean"},
        ],
    )


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    from .io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def arm_name(overrides: dict | None) -> str:
    if not overrides:
        return "seq2seq"
    return "seq2seq[" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) + "]"


# --------------------------------------------------------------------------------------
# One seed
# --------------------------------------------------------------------------------------


@dataclass
class SeedRun:
    seed: int
    dir: Path
    prompts: dict = field(default_factory=dict)  # split -> list of prompt rows (with task/kind/meta)
    responses: dict = field(default_factory=dict)  # arm -> split -> list of {"prompt","response"}
    ppo_runs: dict = field(default_factory=dict)  # arm -> run dir
    rm_eval: dict = field(default_factory=dict)  # kind -> pairwise accuracy on test pairs
    seconds: dict = field(default_factory=dict)


def prepare_data(cfg: ExperimentConfig, seed: int, d: Path) -> dict:
    """Write the seed's data files; returns their paths and the prompt rows per split."""
    from .tasks import get_task

    pairs, sft, ppo_prompts, test_pairs = [], [], [], []
    prompts = {"test": [], "ood": []}
    for name in cfg.tasks:
        task = get_task(name)
        train = task.preferences("train", cfg.train_pairs, seed)
        pairs += [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train]
        sft += [{"prompt": r["prompt"], "response": r["chosen"]} for r in train]  # SFT on the chosen side
        ppo_prompts += [{"prompt": r["prompt"]} for r in task.prompt_rows("train", cfg.ppo_prompts, seed + 7)]
        test_pairs += [{k: r[k] for k in ("prompt", "chosen", "rejected")}
                       for r in task.preferences("test", cfg.test_prompts, seed)]
        for split, n in (("test", cfg.test_prompts), ("ood", cfg.ood_prompts)):
            prompts[split] += task.prompt_rows(split, n, seed)
    files = {
        "pairs": _write_jsonl(d / "data/train_pairs.jsonl", pairs),
        "sft": _write_jsonl(d / "data/sft.jsonl", sft),
        "ppo_prompts": _write_jsonl(d / "data/ppo_prompts.jsonl", ppo_prompts),
        "test_pairs": _write_jsonl(d / "data/test_pairs.jsonl", test_pairs),
    }
    for split, rows in prompts.items():
        files[f"{split}_prompts"] = _write_jsonl(d / f"data/{split}_prompts.jsonl", rows)
    corpus = [t for r in pairs for t in (r["prompt"], r["chosen"], r["rejected"])]
    corpus += [r["prompt"] for rows in prompts.values() for r in rows]
    return {"files": files, "prompts": prompts, "corpus": corpus}


def run_seed(cfg: ExperimentConfig, seed: int, out: Path) -> SeedRun:
    from .config import RMTrainConfig
    from .data.loading import load_preferences
    from .models.tiny import build_tiny_model
    from .rewards import load_reward_model
    from .rewards.inspect import evaluate_pairs
    from .rewards.train import train_reward_model
    from .rl.ppo import PPOConfig, PPOTrainer
    from .rl.rollout import SamplingConfig, generate_to_file
    from .sft import SFTRunConfig, train_sft

    d = out / f"seed-{seed}"
    run = SeedRun(seed=seed, dir=d)
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        run.seconds[name] = round(now - clock, 1)
        clock = now
        log.info("seed %d: %s done in %.0f s", seed, name, run.seconds[name])

    data = prepare_data(cfg, seed, d)
    files, run.prompts = data["files"], data["prompts"]
    if not cfg.base_model:
        base = build_tiny_model(data["corpus"], str(d / "base"), size=cfg.size, seed=seed)
    elif cfg.base_model.endswith(".gguf"):
        from .models.loading import gguf_to_folder

        base = str(gguf_to_folder(cfg.base_model, d / "base"))  # a trainable safetensors folder
    else:
        base = cfg.base_model
    lap("data+model")

    sft_dir = str(train_sft(SFTRunConfig(model=base, data=files["sft"], out=str(d / "sft"),
                                         train=_with_seed(cfg.sft, seed))))
    lap("sft")
    rm_dirs = {}
    test_pairs, _ = load_preferences(files["test_pairs"])
    for kind in ("scalar", "seq2seq"):
        rm_dirs[kind] = str(train_reward_model(RMTrainConfig(
            kind=kind, model=sft_dir, data=files["pairs"], out=str(d / f"rm-{kind}"),
            train=_with_seed(cfg.rm, seed), extraction=cfg.extraction)))
        run.rm_eval[kind] = evaluate_pairs(load_reward_model(rm_dirs[kind]), test_pairs)
        lap(f"rm-{kind}")

    arms = [("scalar", "scalar", None), ("seq2seq", "seq2seq", None)]
    arms += [(arm_name(o), "seq2seq", o) for o in cfg.ablation]
    p = cfg.ppo
    for arm, kind, overrides in arms:
        rm = load_reward_model(rm_dirs[kind])
        if overrides:
            rm.extraction = ExtractionConfig(**{**to_dict(cfg.extraction), **overrides})
        pcfg = PPOConfig(
            policy=sft_dir, rm=rm_dirs[kind], prompts=files["ppo_prompts"], out=str(d / f"ppo-{_slug(arm)}"),
            steps=p.steps, batch_size=p.batch_size, mini_batch_size=p.mini_batch_size, ppo_epochs=p.ppo_epochs,
            actor_lr=p.actor_lr, critic_lr=p.critic_lr, kl_coef=p.kl_coef, seed=seed, save_every=0,
            sample_every=max(p.steps // 3, 1), n_samples=4,
            sampling=SamplingConfig(max_new_tokens=p.max_new_tokens, temperature=p.temperature),
        )
        PPOTrainer(pcfg, reward_model=rm).train()
        run.ppo_runs[arm] = str(d / f"ppo-{_slug(arm)}.run")
        lap(f"ppo-{arm}")

    policies = {"sft": sft_dir, **{arm: str(d / f"ppo-{_slug(arm)}") for arm, _, _ in arms}}
    greedy = SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens, do_sample=False)
    for arm, folder in policies.items():
        run.responses[arm] = {}
        for split in ("test", "ood"):
            path = d / "responses" / f"{_slug(arm)}-{split}.jsonl"
            generate_to_file(folder, files[f"{split}_prompts"], str(path), greedy, batch_size=32)
            run.responses[arm][split] = [json.loads(x) for x in path.read_text().splitlines() if x]
    lap("generate")
    return run


def _slug(arm: str) -> str:
    return arm.replace("[", "-").replace("]", "").replace(",", "-").replace("=", "_")


def _with_seed(opts: TrainOptions, seed: int) -> TrainOptions:
    from dataclasses import replace

    return replace(opts, seed=seed)


# --------------------------------------------------------------------------------------
# Evaluation across seeds
# --------------------------------------------------------------------------------------


def evaluate_runs(cfg: ExperimentConfig, runs: list[SeedRun]) -> dict:
    """Oracle-judged metrics per split and task, pooled over seeds."""
    from .eval.judges import OracleJudge
    from .eval.winrate import pairwise_winrate
    from .tasks import get_task

    arms = list(runs[0].responses)
    comparisons = [("seq2seq", "scalar"), ("seq2seq", "sft"), ("scalar", "sft")]
    comparisons += [(a, "scalar") for a in arms if a.startswith("seq2seq[")]
    result = {"arms": arms, "splits": {}}
    for split in ("test", "ood"):
        # prompt -> task, kind, meta (pooled over seeds: prompt texts may repeat across seeds)
        info = {}
        for r in runs:
            for row in r.prompts[split]:
                info[row["prompt"]] = row
        tasks = {name: get_task(name) for name in cfg.tasks}

        def score(prompt, response, info=info, tasks=tasks):
            return tasks[info[prompt]["task"]].score(prompt, response)

        judge = OracleJudge(score, name="oracle")
        split_res = {"win_rates": {}, "by_task": {}, "arms": {}}
        for a, b in comparisons:
            if a not in arms or b not in arms:
                continue
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
    """Mean oracle score, lengths against the ideal, refusal and unsafe rates for one arm."""
    import statistics

    from .eval.safety import is_refusal

    out = {"quality": {}, "length": {}, "ideal_length": {}, "refusal": {}, "unsafe_by_category": {}}
    by_task: dict[str, list] = {}
    for x in rows:
        by_task.setdefault(info[x["prompt"]]["task"], []).append(x)
    for name, xs in by_task.items():
        task = tasks[name]
        out["quality"][name] = statistics.fmean(task.score(x["prompt"], x["response"]) for x in xs)
        out["length"][name] = statistics.fmean(len(x["response"].split()) for x in xs)
        ideal = [task.ideal_length(x["prompt"]) for x in xs]
        ideal = [i for i in ideal if i is not None]
        out["ideal_length"][name] = statistics.fmean(ideal) if ideal else None
        if name == "safety":
            groups: dict[str, list] = {}
            for x in xs:
                refused = task.labels(x["prompt"], x["response"]).get("refusal", is_refusal(x["response"]))
                groups.setdefault(info[x["prompt"]]["kind"], []).append(bool(refused))
            out["refusal"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
            cats: dict[str, list] = {}
            for x in xs:
                if info[x["prompt"]]["kind"] == "hazardous":
                    lab = task.labels(x["prompt"], x["response"])
                    cats.setdefault(lab.get("category") or "unknown", []).append(bool(lab.get("unsafe")))
            out["unsafe_by_category"] = {k: sum(v) / len(v) for k, v in sorted(cats.items())}
    return out


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def run_experiment(cfg: ExperimentConfig, out: Path) -> Path:
    from .eval.experiment_report import markdown_summary, write_report
    from .io import atomic_write_text
    from .tasks import get_task

    for name in cfg.tasks:
        get_task(name)  # fail fast on a typo
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = [run_seed(cfg, seed, out) for seed in cfg.seeds]
    results = evaluate_runs(cfg, runs)
    results["rm_eval"] = {r.seed: r.rm_eval for r in runs}
    results["seconds"] = {r.seed: r.seconds for r in runs}
    results["config"] = to_dict(cfg)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", markdown_summary(results))
    html = write_report(results, runs, out)
    log.info("report: %s (%.0f s)", html, results["total_seconds"])
    return html
