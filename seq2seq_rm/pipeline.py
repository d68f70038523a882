"""The end-to-end run behind ``seq2seq-rm demo``.

For now (until the bundled tasks and PPO land) the demo trains both reward models on the
bundled sample preferences (tasks/sample.py) from a tiny model built on the spot, reports
their held-out pairwise accuracy, and shows the seq2seq RM's token rewards.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import RMTrainConfig, TrainOptions
from .io import atomic_write_json

log = logging.getLogger(__name__)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def quick_demo(out: Path, seed: int = 0, n_train: int = 480, n_test: int = 60, epochs: float = 6.0) -> dict:
    from .data.loading import load_preferences, load_prompts
    from .models.tiny import build_tiny_model
    from .rewards import load_reward_model
    from .rewards.inspect import evaluate_pairs, render_terminal, score_records
    from .rewards.train import train_reward_model
    from .tasks.sample import sample_preferences

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    train_rows = sample_preferences(n_train, seed=seed)
    test_rows = sample_preferences(n_test, seed=seed + 1000)
    _write_jsonl(out / "data/train.jsonl", train_rows)
    _write_jsonl(out / "data/test.jsonl", test_rows)
    # responses to score: for each test prompt, the chosen and the rejected response
    score_rows = [{"prompt": r["prompt"], "response": r[k]} for r in test_rows[:6] for k in ("chosen", "rejected")]
    _write_jsonl(out / "data/responses.jsonl", score_rows)

    log.info("[1/4] building a tiny model and tokenizer from the sample corpus")
    texts = [t for r in train_rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    base = build_tiny_model(texts, str(out / "base"), size="tiny", seed=seed)

    metrics = {}
    for step, kind in ((2, "seq2seq"), (3, "scalar")):
        log.info("[%d/4] training the %s reward model", step, kind)
        cfg = RMTrainConfig(
            kind=kind, model=str(base), data=str(out / "data/train.jsonl"), out=str(out / f"rm-{kind}"),
            train=TrainOptions(epochs=epochs, lr=3e-3 if kind == "seq2seq" else 1e-3, batch_size=16,
                               max_length=256, seed=seed, logging_steps=20),
        )
        train_reward_model(cfg)
        rm = load_reward_model(cfg.out)
        test, _ = load_preferences(str(out / "data/test.jsonl"))
        metrics[kind] = evaluate_pairs(rm, test)
        log.info("%s RM held-out pairwise accuracy: %.3f", kind, metrics[kind]["accuracy"])

    log.info("[4/4] token rewards of held-out responses")
    rm = load_reward_model(out / "rm-seq2seq")
    recs, _ = load_prompts(str(out / "data/responses.jsonl"), require_response=True)
    rows = score_records(rm, recs)
    atomic_write_json(out / "token_rewards.json", {"rows": rows})
    render_terminal(rows, limit=4)
    metrics["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "metrics.json", metrics)
    log.info(
        "held-out accuracy: seq2seq %.3f, scalar %.3f; wrote %s (%.0f s)",
        metrics["seq2seq"]["accuracy"], metrics["scalar"]["accuracy"], out, metrics["seconds"],
    )
    return metrics
