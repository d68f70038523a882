"""The paper's experiment on the bundled offline tasks: ``seq2seq-rm demo`` and ``experiment``.

With everything else equal between the arms (same data, same SFT policy, same PPO options;
the baseline is never weakened):

    shared (once, sft_seed; or per seed with shared_sft=false):
          tokenizer + base model built from the task corpus (or the given base model)
          -> SFT on the tasks' reference demonstrations (or the chosen side of the pairs)
    per seed:
          preference pairs from the simulated annotator (its biases are options)
          -> scalar RM (Bradley-Terry) and seq2seq RM (Correction + Identity), both from SFT
          -> PPO with each RM  [+ ablation: the seq2seq RM under other extraction options],
             the oracle scoring every step's rollouts (over-optimisation curves)
          -> greedy responses on held-out test and out-of-distribution prompts
    [bias sweep: the per-seed part again for each annotator setting, main arms only]
then oracle judgements (evaluate.py) and the report (report.py).

The output folder holds ``experiment.json`` (the config, the commit, the status), ``shared/``,
one ``seed-N/`` folder per seed, ``sweep/`` (if any) and the report. Every stage's output is
written atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import TrainOptions, flatten_options, to_dict
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text
from ..outputs import META_FILES, check_output_dir
from .config import AnnotatorOptions, ExperimentConfig, arm_name

log = logging.getLogger(__name__)

SPLITS = ("test", "ood")


@dataclass
class SeedRun:
    seed: int
    dir: Path
    prompts: dict = field(default_factory=dict)  # split -> list of prompt rows (with task/kind/meta)
    responses: dict = field(default_factory=dict)  # arm -> split -> list of {"prompt","response"}
    ppo_runs: dict = field(default_factory=dict)  # arm -> run dir
    rm_eval: dict = field(default_factory=dict)  # kind -> {"annotator": ..., "oracle": ...} pairwise accuracy
    extraction: dict = field(default_factory=dict)  # arm -> the full extraction options it ran with
    seconds: dict = field(default_factory=dict)


class _Clock:
    def __init__(self, into: dict, what: str):
        self.into, self.what, self.t = into, what, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round(now - self.t, 1)
        self.t = now
        log.info("%s: %s done in %.0f s", self.what, name, self.into[name])


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _annotator(opts: AnnotatorOptions):
    from ..tasks import Annotator

    return Annotator(refusal_bias=opts.refusal_bias, length_bias=opts.length_bias, noise=opts.noise)


def _oracle_order(row: dict) -> dict:
    """A preference row with chosen = the response the ORACLE prefers."""
    keep = {k: row[k] for k in ("prompt", "chosen", "rejected")}
    if not row["meta"]["agrees_with_oracle"]:
        keep["chosen"], keep["rejected"] = row["rejected"], row["chosen"]
    return keep


def prepare_data(cfg: ExperimentConfig, seed: int, d: Path, annotator: AnnotatorOptions) -> dict:
    """Write one seed's data files; returns their paths, the prompt rows per split and the corpus.

    Test pairs are written twice: as the annotator labelled them (``test_pairs``) and ordered by
    the oracle (``test_pairs_oracle``), so an RM's accuracy can be measured against both.
    """
    from ..tasks import get_task

    ann = _annotator(annotator)
    pairs, chosen_sft, ppo_prompts, test_pairs, test_oracle = [], [], [], [], []
    test_groups = {"task": [], "pair": []}
    prompts = {s: [] for s in SPLITS}
    for name in cfg.tasks:
        task = get_task(name)
        train = task.preferences("train", cfg.train_pairs, seed, ann)
        pairs += [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train]
        chosen_sft += [{"prompt": r["prompt"], "response": r["chosen"]} for r in train]
        ppo_prompts += [{"prompt": r["prompt"], "task": r["task"], "kind": r["kind"]}
                        for r in task.prompt_rows("train", cfg.ppo_prompts, seed + 7)]
        held_out = task.preferences("test", cfg.test_prompts, seed, ann)
        test_pairs += [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in held_out]
        test_oracle += [_oracle_order(r) for r in held_out]
        test_groups["task"] += [name] * len(held_out)
        test_groups["pair"] += [_pair_label(r) for r in held_out]
        for split, n in (("test", cfg.test_prompts), ("ood", cfg.ood_prompts)):
            prompts[split] += task.prompt_rows(split, n, seed)
    files = {
        "pairs": _write_jsonl(d / "data/train_pairs.jsonl", pairs),
        "chosen_sft": _write_jsonl(d / "data/chosen_sft.jsonl", chosen_sft),
        "ppo_prompts": _write_jsonl(d / "data/ppo_prompts.jsonl", ppo_prompts),
        "test_pairs": _write_jsonl(d / "data/test_pairs.jsonl", test_pairs),
        "test_pairs_oracle": _write_jsonl(d / "data/test_pairs_oracle.jsonl", test_oracle),
    }
    for split, rows in prompts.items():
        files[f"{split}_prompts"] = _write_jsonl(d / f"data/{split}_prompts.jsonl", rows)
    corpus = [t for r in pairs for t in (r["prompt"], r["chosen"], r["rejected"])]
    corpus += [r["prompt"] for rows in prompts.values() for r in rows]
    return {"files": files, "prompts": prompts, "corpus": corpus, "test_groups": test_groups}


def _kept(path: Path, resume: bool, kind: str | None = None) -> bool:
    """Whether a resumed experiment keeps the finished stage output at ``path`` (every stage's
    output is published atomically, so one that exists is complete; a folder is also checked to
    hold the ``kind`` of output the stage writes)."""
    if not resume or not path.exists():
        return False
    if kind is not None:
        from ..outputs import output_kind

        found = output_kind(path)
        if found != kind:
            raise ConfigError(f"cannot resume: {path} should hold a {kind} output but holds "
                              f"{found or 'something else'}; start the experiment again with --overwrite")
    log.info("resume: keeping %s", path)
    return True


def _started(out: str | Path, resume: bool) -> bool:
    """Whether a resumed experiment continues a stage that began but did not publish ``out``:
    its run folder ``OUT.run/`` exists (the stage continues from its newest checkpoint)."""
    return resume and Path(str(out) + ".run").is_dir()


def build_sft(cfg: ExperimentConfig, d: Path, seed: int, extra_corpus: list[str], chosen_sft: str | None,
              resume: bool = False) -> str:
    """Base model (built from the corpus, or ``base_model``) and the SFT policy in ``d``; returns the
    policy. ``resume``: keep a base model and SFT policy a stopped run already wrote there."""
    from ..models.tiny import build_tiny_model
    from ..sft import SFTRunConfig, train_sft
    from ..tasks import get_task

    clock = _Clock({}, f"sft (seed {seed})")
    demos = []
    for name in cfg.tasks:  # reference demonstrations, on prompts drawn apart from the preference pairs'
        demos += get_task(name).sft_rows("train", cfg.sft_rows_of(name), 1000 + seed)
    ref_file = _write_jsonl(d / "data/reference_sft.jsonl", demos)
    if not cfg.base_model:
        corpus = [t for r in demos for t in (r["prompt"], r["response"])] + extra_corpus
        base = str(d / "base")
        if not _kept(d / "base", resume, "tiny-model"):
            build_tiny_model(corpus, base, size=cfg.size, seed=seed)
    elif cfg.base_model.endswith(".gguf"):
        from ..models.loading import gguf_to_folder

        base = str(d / "base")
        if not (resume and (d / "base").is_dir()):
            gguf_to_folder(cfg.base_model, d / "base")  # a trainable safetensors folder
    else:
        base = cfg.base_model
    data = ref_file if cfg.sft_data == "reference" or chosen_sft is None else chosen_sft
    sft_dir = str(d / "sft")
    if not _kept(d / "sft", resume, "sft"):
        train_sft(SFTRunConfig(model=base, data=data, out=sft_dir, train=_with_seed(cfg.sft, seed),
                               dtype=cfg.dtype, resume=_started(sft_dir, resume)))
    clock.lap("base+sft")
    return sft_dir


def arms(cfg: ExperimentConfig, with_ablation: bool = True) -> list[tuple[str, str, dict | None]]:
    """``(name, RM kind, extraction overrides)`` of every PPO arm."""
    out = [("scalar", "scalar", None), ("seq2seq", "seq2seq", None)]
    return out + ([(arm_name(o), "seq2seq", o) for o in cfg.ablation] if with_ablation else [])


def rollout_metrics_fn(rows: list[dict]):
    """Per-step oracle metrics of PPO rollouts: mean oracle quality, and per task the mean words
    against the oracle's ideal, and the refusal rate on each safety prompt kind."""
    from ..eval.safety import is_refusal
    from ..tasks import get_task

    info = {r["prompt"]: r for r in rows}
    tasks = {name: get_task(name) for name in {r["task"] for r in rows}}

    def metrics(prompts, texts) -> dict:
        by: dict[str, list] = {}
        quality = []
        for p, text in zip(prompts, texts, strict=True):
            row = info[p]
            task = tasks[row["task"]]
            quality.append(task.score(p, text))
            by.setdefault(f"words_{row['task']}", []).append(len(text.split()))
            ideal = task.ideal_length(p)
            if ideal is not None:
                by.setdefault(f"ideal_words_{row['task']}", []).append(ideal)
            if row["task"] == "safety":
                refused = task.labels(p, text).get("refusal", is_refusal(text))
                by.setdefault(f"refusal_{row['kind']}", []).append(float(refused))
        out = {"oracle_quality": sum(quality) / len(quality)}
        out.update({k: sum(v) / len(v) for k, v in by.items()})
        return out

    return metrics


def run_seed(cfg: ExperimentConfig, seed: int, d: Path, sft_dir: str | None, annotator: AnnotatorOptions,
             with_ablation: bool = True, resume: bool = False) -> SeedRun:
    """One seed's data, reward models, PPO arms and greedy responses in ``d``. ``resume``: keep
    every stage output a stopped run already published there (the data files are deterministic
    and rewritten); a PPO arm with a run folder but no policy continues from its checkpoints."""
    from ..config import RMTrainConfig
    from ..data.loading import load_preferences
    from ..rewards import load_reward_model
    from ..rewards.evaluate import evaluate_pairs
    from ..rewards.train import train_reward_model
    from ..rl.ppo import PPOTrainer
    from ..rl.rollout import SamplingConfig, generate_to_file

    run = SeedRun(seed=seed, dir=d)
    clock = _Clock(run.seconds, f"seed {seed}")
    data = prepare_data(cfg, seed, d, annotator)
    files, run.prompts = data["files"], data["prompts"]
    if sft_dir is None:
        sft_dir = build_sft(cfg, d, seed, data["corpus"], files["chosen_sft"], resume)
    clock.lap("data+sft")

    rm_dirs = {}
    test_sets = {"annotator": load_preferences(files["test_pairs"])[0],
                 "oracle": load_preferences(files["test_pairs_oracle"])[0]}
    for kind in ("scalar", "seq2seq"):
        rm_dirs[kind] = str(d / f"rm-{kind}")
        if not _kept(d / f"rm-{kind}", resume, "reward-model"):
            train_reward_model(RMTrainConfig(kind=kind, model=sft_dir, data=files["pairs"], out=rm_dirs[kind],
                                             train=_with_seed(cfg.rm, seed), extraction=cfg.extraction,
                                             dtype=cfg.dtype, resume=_started(rm_dirs[kind], resume)))
        rm = load_reward_model(rm_dirs[kind], dtype=cfg.dtype)
        run.rm_eval[kind] = {labels: evaluate_pairs(rm, recs, groups=_breakdowns(recs, data["test_groups"]))
                             for labels, recs in test_sets.items()}
        clock.lap(f"rm-{kind}")

    ppo_rows = [json.loads(x) for x in Path(files["ppo_prompts"]).read_text(encoding="utf-8").splitlines() if x]
    for arm, kind, overrides in arms(cfg, with_ablation):
        out_dir = d / f"ppo-{_slug(arm)}"
        extraction = cfg.arm_extraction(overrides) if kind == "seq2seq" else None
        pcfg = replace(cfg.ppo, policy=sft_dir, rm=rm_dirs[kind], prompts=files["ppo_prompts"], out=str(out_dir),
                       seed=seed, extraction=extraction, dtype=cfg.dtype,
                       resume=_started(out_dir, resume))
        if not _kept(out_dir, resume, "ppo-policy"):
            PPOTrainer(pcfg, rollout_metrics=rollout_metrics_fn(ppo_rows)).train()
        run.ppo_runs[arm] = str(out_dir) + ".run"
        run.extraction[arm] = to_dict(extraction) if extraction is not None else None
        clock.lap(f"ppo-{arm}")

    policies = {"sft": sft_dir, **{arm: str(d / f"ppo-{_slug(arm)}") for arm, _, _ in arms(cfg, with_ablation)}}
    greedy = SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens, do_sample=False)
    for arm, folder in policies.items():
        run.responses[arm] = {}
        for split in SPLITS:
            path = d / "responses" / f"{_slug(arm)}-{split}.jsonl"
            if not _kept(path, resume):
                generate_to_file(folder, files[f"{split}_prompts"], str(path), greedy, batch_size=32,
                                 dtype=cfg.dtype)
            run.responses[arm][split] = [json.loads(x) for x in path.read_text().splitlines() if x]
    clock.lap("generate")
    return run


def _pair_label(row: dict) -> str:
    """``task: better kind > worse kind`` (by the oracle) of an annotated pair, e.g.
    ``summarize: full > wrong``: which comparisons an RM gets wrong."""
    kinds = row["meta"]["kinds"]
    better = row["meta"]["oracle_prefers"]
    worse = kinds[1] if kinds[0] == better else kinds[0]
    return f"{row['meta']['task']}: {better} > {worse}"


def _breakdowns(records: list, groups: dict[str, list[str]]) -> dict[str, list[str]] | None:
    """The task and pair-kind labels of the held-out pairs, for RM accuracy by task and by kind of
    comparison; None (overall accuracy only) if the loader dropped a row, so they no longer line up."""
    if any(len(records) != len(labels) for labels in groups.values()):
        log.warning("held-out pairs: %d loaded of %d written; RM accuracy is not broken down by task",
                    len(records), len(groups["task"]))
        return None
    return groups


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


def _resume_check(cfg: ExperimentConfig, out: Path, overwrite: bool) -> dict:
    """Refuse to resume ``out`` unless it holds an experiment run with exactly this config;
    returns the stopped run's ``experiment.json``."""
    from ..outputs import read_json

    if overwrite:
        raise ConfigError("--resume continues the experiment in --out; --overwrite would delete it: give one")
    meta = read_json(out / META_FILES["experiment"])
    if meta is None or meta.get("kind") != "experiment":
        raise ConfigError(f"cannot resume: {out} holds no experiment ({META_FILES['experiment']} is missing); "
                          "run without --resume")
    old, new = flatten_options(meta.get("config") or {}), flatten_options(to_dict(cfg))
    default = flatten_options(to_dict(ExperimentConfig()))
    # an option newer than the stopped run, left at its default, keeps what that run did
    diff = [f"{k}: {old.get(k, '(unset)')!r} then, {new.get(k, '(unset)')!r} now"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and not (k not in old and k in default and new[k] == default[k])]
    if diff:
        raise ConfigError(f"cannot resume {out}: the options differ from the stopped run's ("
                          + "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
                          + "). Use the same options, or start again with --overwrite")
    return meta



def run_experiment(cfg: ExperimentConfig, out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Run the shared stage, every seed and the bias sweep, judge, and write the report into
    ``out``; returns report.html.

    ``out`` must be new or empty, or an earlier experiment with ``overwrite`` (which deletes it
    when this one starts). ``experiment.json`` records the config, the commit and the status:
    a killed or failed run says where it stopped, and the stages it finished stay on disk.
    ``resume`` continues such a run (same config only): finished stages are kept, the rest run.
    """
    from ..tasks import get_task
    from .evaluate import evaluate_runs, evaluate_sweep
    from .report import markdown_summary, write_report

    out = Path(out)
    earlier = None
    if resume:
        earlier = _resume_check(cfg, out, overwrite)
    else:
        check_output_dir(out, "experiment", overwrite, inputs=[cfg.sft_policy, cfg.base_model])
    if cfg.base_model and not Path(cfg.base_model).exists():
        raise ConfigError(f"base_model {cfg.base_model} does not exist")
    if cfg.sft_policy:
        from ..outputs import output_kind

        found = output_kind(cfg.sft_policy) if Path(cfg.sft_policy).is_dir() else None
        if found != "sft":
            raise ConfigError(f"sft_policy {cfg.sft_policy} is not an SFT policy folder (no {META_FILES['sft']} of "
                              f"a `seq2seq-rm sft` output{'; it holds a ' + found + ' output' if found else ''})")
    for name in cfg.tasks:
        get_task(name)
    if not resume and out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)  # an earlier experiment (checked above), replaced as asked
        log.info("removed the earlier experiment in %s (--overwrite)", out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "experiment", "status": "running", "commit": _commit(), "config": to_dict(cfg)}
    if earlier is not None:  # the commit that started it stays; every resumption is recorded
        meta = {**earlier, "status": "running", "resumed": [*earlier.get("resumed", []), meta["commit"]]}
        meta.pop("error", None)
    marker = out / META_FILES["experiment"]
    atomic_write_json(marker, meta)
    t0 = time.perf_counter()
    shared_seconds: dict = {}
    try:
        sft_dir = cfg.sft_policy or None
        if cfg.shared_sft and not cfg.sft_policy:
            clock = _Clock(shared_seconds, "shared")
            first = prepare_data(cfg, cfg.seeds[0], out / "shared", cfg.annotator)  # a corpus for the tokenizer
            sft_dir = build_sft(cfg, out / "shared", cfg.sft_seed, first["corpus"], first["files"]["chosen_sft"],
                                resume)
            clock.lap("base+sft")
        runs = [run_seed(cfg, seed, out / f"seed-{seed}", sft_dir, cfg.annotator, resume=resume)
                for seed in cfg.seeds]
        results = evaluate_runs(cfg, runs)
        sweep = []
        main_runs = {r.seed: r for r in runs}
        for i, overrides in enumerate(cfg.bias_sweep):
            ann = cfg.sweep_annotator(overrides, where=f"bias_sweep[{i}]")
            point = []
            for s in cfg.sweep_seeds:
                if ann == cfg.annotator and s in main_runs:  # the main experiment already ran this point
                    point.append(main_runs[s])
                else:
                    point.append(run_seed(cfg, s, out / "sweep" / f"point-{i}" / f"seed-{s}", sft_dir, ann,
                                          with_ablation=False, resume=resume))
            sweep.append((ann, point))
        if sweep:
            results["sweep"] = evaluate_sweep(cfg, sweep)
    except BaseException as e:
        atomic_write_json(marker, {**meta, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        log.error("the experiment stopped (%s); the stages it finished are in %s; continue it with the same "
                  "command and --resume", type(e).__name__, out)
        raise
    results["rm_eval"] = {r.seed: r.rm_eval for r in runs}
    results["extraction"] = runs[0].extraction
    results["seconds"] = {"shared": shared_seconds, **{r.seed: r.seconds for r in runs}}
    results["config"] = to_dict(cfg)
    results["commit"] = meta["commit"]
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    html = write_report(results, runs, out)  # adds its warnings and the sample table to results
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", markdown_summary(results))
    atomic_write_json(marker, {**meta, "status": "done", "seconds": results["total_seconds"]})
    log.info("report: %s (%.0f s)", html, results["total_seconds"])
    return html
