"""``seq2seq-rm`` command line. Thin: parse arguments into a config, call one function.

Training commands take the common options as flags (``--epochs --lr --batch-size
--max-length --seed``), everything else through ``--config FILE.yaml`` and trailing
``key=value`` overrides (``train.lora.enabled=true extraction.magnitude=prob``).
``seq2seq-rm options rm-train`` lists every option with its default and help.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import ConfigError, Seq2SeqRMError

log = logging.getLogger("seq2seq_rm")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    # Under torchrun / accelerate launch only rank 0 reports progress; the others warn and fail loudly.
    quiet_rank = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(
        level=logging.WARNING if quiet_rank else logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False, markup=False)],
    )
    for noisy in ("transformers", "datasets", "trl", "accelerate", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def _train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (shortcuts for train.* options)")
    g.add_argument("--epochs", type=float, help="train.epochs")
    g.add_argument("--lr", type=float, help="train.lr")
    g.add_argument("--batch-size", type=int, help="train.batch_size")
    g.add_argument("--max-length", type=int, help="train.max_length")
    g.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--config", help="YAML file with options (see `seq2seq-rm options rm-train`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted option overrides")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seq2seq-rm", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="library logs and warnings too")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tiny-model", help="train a byte-level BPE tokenizer and write a small random Llama model")
    t.add_argument("--corpus", required=True, help="JSONL; every string field of every row is text")
    t.add_argument("--out", required=True)
    t.add_argument("--size", choices=["tiny", "small"], default="tiny")
    t.add_argument("--vocab-size", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)

    rm = sub.add_parser("rm", help="reward models: train, eval, score").add_subparsers(dest="rm_command", required=True)
    tr = rm.add_parser("train", help="train a seq2seq RM or the scalar Bradley-Terry baseline")
    tr.add_argument("--kind", choices=["seq2seq", "scalar"])
    tr.add_argument("--model", help="base model folder, hub id, or folder holding --gguf-file")
    tr.add_argument("--gguf-file", help="GGUF file inside --model")
    tr.add_argument("--data", help="preference data (JSONL/JSON/Parquet/datasets folder/hub name)")
    tr.add_argument("--format", dest="data_format", help="data format (default auto)")
    tr.add_argument("--out", help="output folder")
    _train_flags(tr)

    ev = rm.add_parser("eval", help="pairwise accuracy on held-out preference pairs")
    ev.add_argument("--rm", required=True, help="reward model folder")
    ev.add_argument("--data", required=True)
    ev.add_argument("--format", default="auto")
    ev.add_argument("--json", help="write the metrics here as JSON")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--limit", type=int)

    sc = rm.add_parser("score", help="token-level rewards of responses (JSONL with prompt and response)")
    sc.add_argument("--rm", required=True)
    sc.add_argument("--data", required=True)
    sc.add_argument("--out", required=True, help="JSON file with tokens, rewards and the RM's tokens")
    sc.add_argument("--batch-size", type=int, default=16)
    sc.add_argument("--show", type=int, default=5, help="responses to print coloured (0: none)")

    s = sub.add_parser("sft", help="supervised fine-tuning of the policy (loss on response tokens only)")
    s.add_argument("--model", help="base model folder, hub id, or folder holding --gguf-file")
    s.add_argument("--gguf-file", help="GGUF file inside --model")
    s.add_argument("--data", help="prompt/response rows, or preference rows (trains on chosen)")
    s.add_argument("--format", dest="data_format", help="auto | prompt | a preference format (default auto)")
    s.add_argument("--response-field", choices=["auto", "response", "chosen"], help="training target (default auto)")
    s.add_argument("--out", help="output folder")
    _train_flags(s)

    g = sub.add_parser("generate", help="sample one response per prompt into a JSONL file")
    g.add_argument("--model", required=True, help="policy folder (its sft.json, if any, gives the prompt layout)")
    g.add_argument("--prompts", required=True, help="rows with 'prompt' (preference rows work too)")
    g.add_argument("--out", required=True, help="JSONL file: prompt, response, finished, n_tokens")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling (default: unseeded)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    g.add_argument("--limit", type=int, help="only the first N prompts")

    pp = sub.add_parser("ppo", help="PPO with the token-level rewards of a seq2seq RM (or a scalar RM's)")
    pp.add_argument("--policy", help="SFT policy folder")
    pp.add_argument("--rm", help="reward model folder (seq2seq or scalar)")
    pp.add_argument("--prompts", help="prompts (JSONL etc. with a `prompt` field)")
    pp.add_argument("--out", help="final policy folder; OUT.run/ holds checkpoints, metrics, samples")
    pp.add_argument("--steps", type=int, help="PPO iterations")
    pp.add_argument("--seed", type=int)
    pp.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    pp.add_argument("--config", help="YAML file with options (see `seq2seq-rm options ppo`)")
    pp.add_argument("overrides", nargs="*", metavar="key=value", help="dotted option overrides")

    o = sub.add_parser("options", help="list every config option with default and help")
    o.add_argument("which", choices=["rm-train", "sft", "ppo", "experiment"])

    d = sub.add_parser("demo", help="the paper's experiment on the bundled offline tasks, one seed (~10 min on CPU)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--config", help="YAML file with experiment options (see `seq2seq-rm options experiment`)")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="dotted option overrides")

    x = sub.add_parser("experiment", help="the full grid: several seeds plus the extraction ablation")
    x.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    x.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    x.add_argument("--out", default="runs/experiment")
    x.add_argument("--config", help="YAML file with experiment options")
    x.add_argument("overrides", nargs="*", metavar="key=value", help="dotted option overrides")

    tk = sub.add_parser("tasks", help="bundled offline tasks").add_subparsers(dest="tasks_command", required=True)
    te = tk.add_parser("export", help="write a task split as JSONL (preferences, prompts, SFT rows)")
    te.add_argument("task", help="safety | summarize | instruct")
    te.add_argument("--split", choices=["train", "test", "ood"], default="train")
    te.add_argument("--out", required=True, help="output folder")
    te.add_argument("--n", type=int, help="number of prompts (default: the split's documented size)")
    te.add_argument("--seed", type=int, default=0)
    from .eval.commands import add_parsers

    add_parsers(sub)  # eval, inspect
    return p


def cmd_tiny_model(a) -> None:
    from .models.tiny import build_tiny_model, corpus_texts_from_jsonl

    texts = corpus_texts_from_jsonl(a.corpus)
    out = build_tiny_model(texts, a.out, size=a.size, seed=a.seed, vocab_size=a.vocab_size)
    log.info("wrote %s model to %s", a.size, out)


def cmd_rm_train(a) -> None:
    from .config import RMTrainConfig, load_config
    from .rewards.train import train_reward_model

    base = {
        "kind": a.kind, "model": a.model, "gguf_file": a.gguf_file, "data": a.data, "data_format": a.data_format,
        "out": a.out, "train.epochs": a.epochs, "train.lr": a.lr, "train.batch_size": a.batch_size,
        "train.max_length": a.max_length, "train.seed": a.seed,
    }
    cfg = load_config(RMTrainConfig, a.config, a.overrides, base)
    train_reward_model(cfg)


def cmd_sft(a) -> None:
    from .config import load_config
    from .sft import SFTRunConfig, train_sft

    base = {
        "model": a.model, "gguf_file": a.gguf_file, "data": a.data, "data_format": a.data_format, "out": a.out,
        "response_field": a.response_field, "train.epochs": a.epochs, "train.lr": a.lr,
        "train.batch_size": a.batch_size, "train.max_length": a.max_length, "train.seed": a.seed,
    }
    cfg = load_config(SFTRunConfig, a.config, a.overrides, base)
    train_sft(cfg)


def cmd_generate(a) -> None:
    from .rl.rollout import SamplingConfig, generate_to_file

    sampling = SamplingConfig(
        max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
        do_sample=not a.greedy, seed=a.seed,
    )
    generate_to_file(a.model, a.prompts, a.out, sampling, batch_size=a.batch_size, engine=a.engine, limit=a.limit)


def cmd_rm_eval(a) -> None:
    from rich.console import Console
    from rich.table import Table

    from .data.loading import load_preferences
    from .io import atomic_write_json
    from .rewards import load_reward_model
    from .rewards.inspect import evaluate_pairs

    rm = load_reward_model(a.rm)
    records, report = load_preferences(a.data, format=a.format, limit=a.limit)
    log.info(report.summary())
    m = evaluate_pairs(rm, records, a.batch_size)
    m["rm"], m["data"] = str(a.rm), str(a.data)
    table = Table(title=f"{rm.kind} RM on {a.data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in m.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
        elif isinstance(v, dict):
            for kk, vv in v.items():
                table.add_row(f"{k}.{kk}.accuracy", f"{vv['accuracy']:.4f}")
        else:
            table.add_row(k, str(v))
    Console().print(table)
    if a.json:
        atomic_write_json(a.json, m)


def cmd_rm_score(a) -> None:
    from .data.loading import load_prompts
    from .io import atomic_write_json
    from .rewards import load_reward_model
    from .rewards.inspect import render_terminal, score_records

    rm = load_reward_model(a.rm)
    records, report = load_prompts(a.data, require_response=True)
    log.info(report.summary())
    rows = score_records(rm, records, a.batch_size)
    atomic_write_json(a.out, {"rm": str(a.rm), "kind": rm.kind, "extraction": rm.extraction.__dict__, "rows": rows})
    if a.show:
        render_terminal(rows, limit=a.show)
    log.info("wrote token rewards of %d responses to %s", len(rows), a.out)


def cmd_ppo(a) -> None:
    from .config import load_config
    from .rl.ppo import PPOConfig, run_ppo

    base = {"policy": a.policy, "rm": a.rm, "prompts": a.prompts, "out": a.out, "steps": a.steps, "seed": a.seed,
            "resume": True if a.resume else None}
    run_ppo(load_config(PPOConfig, a.config, a.overrides, base))


def cmd_options(a) -> None:
    from .config import RMTrainConfig, describe
    from .pipeline import ExperimentConfig
    from .rl.ppo import PPOConfig
    from .sft import SFTRunConfig

    configs = {"rm-train": RMTrainConfig, "sft": SFTRunConfig, "ppo": PPOConfig, "experiment": ExperimentConfig}
    for key, default, help_ in describe(configs[a.which]):
        print(f"{key:32s} {default:>14s}  {help_}")


def _experiment(a, preset: dict) -> None:
    """Run the experiment: ``preset`` (what the sub-command sets) < --config file < key=value."""
    from .config import load_config
    from .pipeline import ExperimentConfig, run_experiment

    cfg = load_config(ExperimentConfig, a.config, a.overrides, None)
    for key, value in preset.items():  # only where the file and overrides left the default
        if getattr(cfg, key) == getattr(ExperimentConfig(), key):
            setattr(cfg, key, value)
    run_experiment(cfg, Path(a.out))


def cmd_demo(a) -> None:
    _experiment(a, {"seeds": [a.seed]})


def cmd_experiment(a) -> None:
    from .pipeline import experiment_config
    from .tasks import TASKS

    preset = experiment_config(a.seeds)
    tasks = list(preset.tasks)
    if a.tasks != "all":
        tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)} or all")
    _experiment(a, {"seeds": preset.seeds, "ablation": preset.ablation, "tasks": tasks})


def cmd_tasks_export(a) -> None:
    from .tasks import export_split, get_task

    paths = export_split(get_task(a.task), a.split, a.out, n=a.n, seed=a.seed)
    for kind, path in paths.items():
        log.info("%s: %s", kind, path)


COMMANDS = {
    "tiny-model": cmd_tiny_model,
    "options": cmd_options,
    "demo": cmd_demo,
    "sft": cmd_sft,
    "generate": cmd_generate,
    "ppo": cmd_ppo,
    "experiment": cmd_experiment,
    ("tasks", "export"): cmd_tasks_export,
    ("rm", "train"): cmd_rm_train,
    ("rm", "eval"): cmd_rm_eval,
    ("rm", "score"): cmd_rm_score,
}


def _all_commands() -> dict:
    from .eval.commands import EVAL_COMMANDS

    return {**COMMANDS, **EVAL_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a = build_parser().parse_args(argv)
    _setup_logging(a.verbose)
    key = (a.command, getattr(a, f"{a.command}_command")) if a.command in ("rm", "tasks") else a.command
    try:
        _all_commands()[key](a)
    except Seq2SeqRMError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
