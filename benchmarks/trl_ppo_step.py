"""TRL side of ``benchmarks/ppo_step.py``: time TRL 1.12's ``trl.experimental.ppo.PPOTrainer``.

Run by the separate environment ``benchmarks/.trl-env`` (``ppo_step.py`` creates it and calls
this file as a subprocess); it does not import ``seq2seq_rm``. Reads one JSON settings file
(written by ``ppo_step.py``) and writes one JSON result file::

    benchmarks/.trl-env/bin/python benchmarks/trl_ppo_step.py SETTINGS.json RESULT.json

Settings: ``policy`` (the tiny causal-LM folder: policy, reference and the value model's
backbone), ``rm`` (the sequence-classification folder saved from it: the reward model),
``batches`` (token ids of the prompts, already rendered and encoded by the project, one list
of ``batch_size`` prompts per step, in the order our PPO loop sees them), ``gen_len``,
``threads``, ``seed``, ``lr``, ``kl_coef``, ``temperature``, ``out_dir``.

Timing: one wall-clock boundary at ``on_train_begin`` and one at every ``on_step_end``
(after the PPO update, logging and the LR scheduler step); step k's time is the gap
between boundaries k-1 and k (and the process CPU time between them, ``cpu_step``; each
phase's CPU time is ``cpu_<phase>``). Phases are timed by wrapping the module-level helpers the
TRL loop calls (``batch_generation``: generation; ``get_reward`` on the reward model:
reward; ``get_reward`` on the value model and the no-grad ``forward`` of the reference
policy: forward passes; ``gc.collect``, which the loop calls twice per step: "other");
the rest of the step is "train" (GAE, the PPO minibatch update, logging, callbacks).
Wrapping adds two ``perf_counter`` calls per helper call.
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import tempfile
import time
import warnings

KNOBS = ("num_ppo_epochs", "num_mini_batches", "response_length", "per_device_train_batch_size",
         "gradient_accumulation_steps", "local_rollout_forward_batch_size", "stop_token", "temperature",
         "gradient_checkpointing", "bf16", "kl_coef", "learning_rate")


def main(settings_path: str, result_path: str) -> None:
    s = json.loads(open(settings_path, encoding="utf-8").read())
    import torch

    torch.set_num_threads(int(s["threads"]))
    warnings.filterwarnings("ignore")
    import transformers
    import trl
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    transformers.logging.set_verbosity_error()
    batches = s["batches"]
    b = len(batches[0])
    steps = len(batches)
    rows = [ids for batch in batches for ids in batch]

    tok = AutoTokenizer.from_pretrained(s["policy"])
    tok.padding_side = "left"  # TRL appends responses to left-padded queries
    torch.manual_seed(s["seed"])
    policy = AutoModelForCausalLM.from_pretrained(s["policy"])
    ref = AutoModelForCausalLM.from_pretrained(s["policy"])
    value = AutoModelForSequenceClassification.from_pretrained(s["policy"], num_labels=1)
    with torch.no_grad():  # like our critic: a fresh head that starts from V = 0
        value.score.weight.zero_()
    reward = AutoModelForSequenceClassification.from_pretrained(s["rm"], num_labels=1)
    for m in (policy, ref, value, reward):
        m.config.pad_token_id = tok.pad_token_id

    out_dir = s.get("out_dir") or tempfile.mkdtemp(prefix="trl-ppo-")
    cfg = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=b,
        gradient_accumulation_steps=1,
        num_mini_batches=1,  # mini-batch = the whole rollout batch, as on our side
        num_ppo_epochs=1,
        total_episodes=steps * b,
        local_rollout_forward_batch_size=b,  # one generate call / one forward per model for the batch
        response_length=s["gen_len"],
        stop_token="eos",  # stop at the tokenizer's EOS like our HFEngine
        temperature=s["temperature"],
        kl_coef=s["kl_coef"],
        learning_rate=s["lr"],
        gradient_checkpointing=False,  # TRL's PPOConfig default is True; we do not checkpoint
        bf16=False,  # TRL's default is bf16; our side runs float32
        fp16=False,
        use_cpu=True,
        num_sample_generations=0,  # no extra evaluation generations inside the timed loop
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=s["seed"],
        dataloader_num_workers=0,
    )
    ds = Dataset.from_dict({"input_ids": rows})
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=ds, value_model=value, eval_dataset=ds.select(range(b)))
    # The same prompt batches, in the same order, as our loop: no shuffling (benchmark-only change).
    loader = DataLoader(ds, batch_size=b, shuffle=False, collate_fn=trainer.data_collator, drop_last=True)
    trainer.dataloader = trainer.accelerator.prepare(loader)
    trainer.remove_callback(transformers.PrinterCallback)

    phases: dict[str, float] = {"generate": 0.0, "reward": 0.0, "forward": 0.0, "other": 0.0}
    cpu_phases = dict(phases)  # the same phases in process CPU time

    def start():
        return time.perf_counter(), time.process_time()

    def add(name, t0):
        phases[name] += time.perf_counter() - t0[0]
        cpu_phases[name] += time.process_time() - t0[1]
    per_step: list[dict] = []
    boundaries: list[float] = []
    cpu_boundaries: list[float] = []  # process CPU time at the same boundaries
    tokens: list[int] = []
    eos_id = tok.eos_token_id

    real_generation, real_get_reward = ppo_module.batch_generation, ppo_module.get_reward
    real_forward = ppo_module.forward

    def timed_generation(model, queries, *a, **k):
        t0 = start()
        out = real_generation(model, queries, *a, **k)
        add("generate", t0)
        resp = out[0][:, queries.shape[1]:]
        is_eos = (resp == eos_id).int()
        mask = (is_eos.cumsum(-1) - is_eos) == 0  # up to and including the first EOS, as our rollout counts
        tokens.append(int(mask.sum()))
        return out

    def timed_get_reward(model, *a, **k):
        t0 = start()
        out = real_get_reward(model, *a, **k)
        add("reward" if model is trainer.reward_model else "forward", t0)
        return out

    def timed_forward(model, *a, **k):
        if torch.is_grad_enabled():  # the training forward of policy + value
            return real_forward(model, *a, **k)
        t0 = start()
        out = real_forward(model, *a, **k)
        add("forward", t0)
        return out

    class TimedGC:  # the loop calls gc.collect() twice per step: timed as "other"
        def __getattr__(self, name):
            return getattr(gc, name)

        def collect(self, *a):
            t0 = start()
            out = gc.collect(*a)
            add("other", t0)
            return out

    ppo_module.gc = TimedGC()
    ppo_module.batch_generation = timed_generation
    ppo_module.get_reward = timed_get_reward
    ppo_module.forward = timed_forward

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            boundaries.append(time.perf_counter())
            cpu_boundaries.append(time.process_time())

        def on_step_end(self, args, state, control, **kw):
            boundaries.append(time.perf_counter())
            cpu_boundaries.append(time.process_time())
            total = boundaries[-1] - boundaries[-2]
            row = {f"time_{k}": v for k, v in phases.items()}
            row["time_train"] = total - sum(phases.values())
            row["time_step"] = total
            row["cpu_step"] = cpu_boundaries[-1] - cpu_boundaries[-2]
            row.update({f"cpu_{k}": v for k, v in cpu_phases.items()})
            row["cpu_train"] = row["cpu_step"] - sum(cpu_phases.values())
            row["response_tokens"] = tokens[-1] if tokens else None
            per_step.append(row)
            for k in phases:
                phases[k] = cpu_phases[k] = 0.0

    trainer.add_callback(Clock())
    trainer.train()
    result = {
        "steps": per_step,
        "batch_size": b,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "settings": {k: getattr(cfg, k) for k in KNOBS},
    }
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: trl_ppo_step.py SETTINGS.json RESULT.json")
    main(sys.argv[1], sys.argv[2])
