"""Shared fixtures: a tiny model built from the bundled sample corpus, and reward models
trained on it once per test session (a few seconds each on two CPU cores)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import ECHO_SENTENCE, train_options, write_jsonl  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def sample_rows():
    from seq2seq_rm.tasks.sample import sample_preferences

    return sample_preferences(120, seed=0)


@pytest.fixture(scope="session")
def sample_file(tmp_path_factory, sample_rows):
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", sample_rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, sample_rows):
    from seq2seq_rm.models.tiny import build_tiny_model

    texts = [t for r in sample_rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    return str(build_tiny_model(texts, str(tmp_path_factory.mktemp("models") / "tiny"), size="tiny", seed=0))


def _train(kind, tiny_model_dir, sample_file, out, epochs=2.0, **extra):
    from seq2seq_rm.config import RMTrainConfig
    from seq2seq_rm.rewards.train import train_reward_model

    cfg = RMTrainConfig(kind=kind, model=tiny_model_dir, data=sample_file, out=str(out),
                        train=train_options(epochs=epochs), **extra)
    return str(train_reward_model(cfg))


@pytest.fixture(scope="session")
def seq2seq_rm_dir(tmp_path_factory, tiny_model_dir, sample_file):
    return _train("seq2seq", tiny_model_dir, sample_file, tmp_path_factory.mktemp("rm") / "seq2seq")


@pytest.fixture(scope="session")
def scalar_rm_dir(tmp_path_factory, tiny_model_dir, sample_file):
    return _train("scalar", tiny_model_dir, sample_file, tmp_path_factory.mktemp("rm") / "scalar")


@pytest.fixture(scope="session")
def sft_policy_dir(tmp_path_factory, tiny_model_dir, sample_file):
    """The tiny model after a short SFT on the chosen responses: a policy with peaked outputs."""
    from seq2seq_rm.sft import SFTRunConfig, train_sft

    cfg = SFTRunConfig(model=tiny_model_dir, data=sample_file, out=str(tmp_path_factory.mktemp("sft") / "policy"),
                       train=train_options(epochs=6.0))
    return str(train_sft(cfg))


@pytest.fixture(scope="session")
def echo_dir(tmp_path_factory, tiny_model_dir, sample_rows):
    """The tiny model fine-tuned to answer every prompt with ECHO_SENTENCE (prompt/response rows)."""
    from seq2seq_rm.sft import SFTRunConfig, train_sft

    prompts = sorted({r["prompt"] for r in sample_rows})[:24]
    data = write_jsonl(tmp_path_factory.mktemp("echo") / "echo.jsonl",
                       [{"prompt": p, "response": ECHO_SENTENCE} for p in prompts])
    cfg = SFTRunConfig(model=tiny_model_dir, data=data, out=str(tmp_path_factory.mktemp("sft") / "echo"),
                       train=train_options(epochs=4.0, batch_size=8, logging_steps=2))
    return str(train_sft(cfg))


@pytest.fixture(scope="session")
def gpt2_model_dir(tmp_path_factory, tiny_model_dir):
    """A randomly initialised GPT-2 (absolute position embeddings) with the tiny tokenizer: left
    padding shifts its outputs unless position ids are counted from each row's first token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from seq2seq_rm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # larger position embeddings than the default init: positions matter visibly
        model.transformer.wpe.weight.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("models") / "gpt2"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
