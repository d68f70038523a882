"""Small helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json

from seq2seq_rm.config import TemplateConfig, TrainOptions

CHAT = TemplateConfig()  # auto: the tiny tokenizer has a (ChatML) chat template
ECHO_SENTENCE = "Thank you for asking."  # what the `echo_dir` policy answers to every prompt


def write_jsonl(path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def train_options(**kw) -> TrainOptions:
    """The suite's supervised-training options: fast on the tiny model (learning rate for a model
    trained from scratch, short sequences, frequent logging); ``kw`` overrides any of them."""
    return TrainOptions(**{"epochs": 1.0, "lr": 3e-3, "batch_size": 16, "max_length": 256, "seed": 0,
                           "logging_steps": 5, **kw})


class EvenTokenRM:
    """+1 for every even token id: a dense reward that is non-zero on a random policy and moves it."""

    kind = "seq2seq"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def token_rewards(self, prompts, ids, mask):
        from seq2seq_rm.rewards.base import TokenRewards

        return TokenRewards(rewards=((ids % 2 == 0) & mask).float(), mask=mask)
