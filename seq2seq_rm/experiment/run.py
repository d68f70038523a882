"""The paper's experiment on the bundled offline tasks: ``seq2seq-rm demo`` and ``experiment``.

For each seed, with everything else equal between the arms (same data, same SFT policy,
same PPO options; the baseline is never weakened):

    tasks -> data (train pairs from the simulated annotator, SFT rows, prompts)
          -> tiny tokenizer + model built from the corpus (or the given base model)
          -> SFT on the chosen responses
          -> scalar RM (Bradley-Terry) and seq2seq RM (Correction + Identity), both from SFT
          -> PPO with each RM  [+ ablation: the seq2seq RM under other extraction options]
          -> greedy responses on held-out test and out-of-distribution prompts
then, over all seeds: oracle judgements (evaluate.py) and the report (report.py).

The output folder holds ``experiment.json`` (the config, the commit, the status), one
``seed-N/`` folder per seed (every stage's output, each written atomically) and the report.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import TrainOptions, to_dict
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text
from ..outputs import META_FILES, check_output_dir
from .config import ExperimentConfig, arm_name

log = logging.getLogger(__name__)


@dataclass
class SeedRun:
    seed: int
    dir: Path
    prompts: dict = field(default_factory=dict)  # split -> list of prompt rows (with task/kind/meta)
    responses: dict = field(default_factory=dict)  # arm -> split -> list of {"prompt","response"}
    ppo_runs: dict = field(default_factory=dict)  # arm -> run dir
    rm_eval: dict = field(default_factory=dict)  # kind -> pairwise accuracy on test pairs
    seconds: dict = field(default_factory=dict)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def prepare_data(cfg: ExperimentConfig, seed: int, d: Path) -> dict:
    """Write the seed's data files; returns their paths, the prompt rows per split and the corpus."""
    from ..tasks import get_task

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


def arms(cfg: ExperimentConfig) -> list[tuple[str, str, dict | None]]:
    """``(name, RM kind, extraction overrides)`` of every PPO arm."""
    return [("scalar", "scalar", None), ("seq2seq", "seq2seq", None)] + [
        (arm_name(o), "seq2seq", o) for o in cfg.ablation]


def run_seed(cfg: ExperimentConfig, seed: int, out: Path) -> SeedRun:
    from ..config import RMTrainConfig
    from ..data.loading import load_preferences
    from ..models.tiny import build_tiny_model
    from ..rewards import load_reward_model
    from ..rewards.evaluate import evaluate_pairs
    from ..rewards.train import train_reward_model
    from ..rl.ppo import PPOTrainer
    from ..rl.rollout import SamplingConfig, generate_to_file
    from ..sft import SFTRunConfig, train_sft

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
        from ..models.loading import gguf_to_folder

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

    for arm, kind, overrides in arms(cfg):
        out_dir = d / f"ppo-{_slug(arm)}"
        pcfg = replace(cfg.ppo, policy=sft_dir, rm=rm_dirs[kind], prompts=files["ppo_prompts"], out=str(out_dir),
                       seed=seed, extraction=cfg.arm_extraction(overrides) if kind == "seq2seq" else None)
        PPOTrainer(pcfg).train()
        run.ppo_runs[arm] = str(out_dir) + ".run"
        lap(f"ppo-{arm}")

    policies = {"sft": sft_dir, **{arm: str(d / f"ppo-{_slug(arm)}") for arm, _, _ in arms(cfg)}}
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
    return replace(opts, seed=seed)


def _commit() -> str | None:
    """The git commit of the code that ran (None outside a checkout)."""
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


def run_experiment(cfg: ExperimentConfig, out: str | Path, overwrite: bool = False) -> Path:
    """Run every seed, judge, and write the report into ``out``; returns report.html.

    ``out`` must be new or empty, or an earlier experiment with ``overwrite`` (which deletes it
    when this one starts). ``experiment.json`` records the config, the commit and the status:
    a killed or failed run says where it stopped, and the stages it finished stay on disk.
    """
    from ..tasks import get_task
    from .evaluate import evaluate_runs
    from .report import markdown_summary, write_report

    out = Path(out)
    check_output_dir(out, "experiment", overwrite)
    if cfg.base_model and not Path(cfg.base_model).exists():
        raise ConfigError(f"base_model {cfg.base_model} does not exist")
    for name in cfg.tasks:
        get_task(name)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)  # an earlier experiment (checked above), replaced as asked
        log.info("removed the earlier experiment in %s (--overwrite)", out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "experiment", "status": "running", "commit": _commit(), "config": to_dict(cfg)}
    marker = out / META_FILES["experiment"]
    atomic_write_json(marker, meta)
    t0 = time.perf_counter()
    try:
        runs = [run_seed(cfg, seed, out) for seed in cfg.seeds]
        results = evaluate_runs(cfg, runs)
    except BaseException as e:
        atomic_write_json(marker, {**meta, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        log.error("the experiment stopped (%s); the stages it finished are in %s", type(e).__name__, out)
        raise
    results["rm_eval"] = {r.seed: r.rm_eval for r in runs}
    results["seconds"] = {r.seed: r.seconds for r in runs}
    results["config"] = to_dict(cfg)
    results["commit"] = meta["commit"]
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", markdown_summary(results))
    html = write_report(results, runs, out)
    atomic_write_json(marker, {**meta, "status": "done", "seconds": results["total_seconds"]})
    log.info("report: %s (%.0f s)", html, results["total_seconds"])
    return html
