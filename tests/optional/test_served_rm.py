"""The seq2seq RM served by vLLM (rewards/served.py) against the local extraction, with a real vLLM
server (its CPU build, .venv-vllm) started on 127.0.0.1 by the test on a trained RM folder.

The independent computation is the local RM: one teacher-forced HF forward pass (fp32). For every
magnitude, rematch and normalisation the served rewards must equal it (vLLM's CPU kernels and HF
agree to ~2e-6 in fp32), and the agree pattern and predicted tokens exactly. Marker `vllm`
(`make test-vllm`); pytest runs in .venv, the server in .venv-vllm."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
from helpers import train_options, write_jsonl
from vllm_server import vllm_server

from seq2seq_rm.errors import ConfigError
from seq2seq_rm.rewards import load_reward_model
from seq2seq_rm.rewards.base import encode_responses

pytestmark = pytest.mark.vllm
ATOL = 1e-4


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, sample_rows, sample_file):
    """A seq2seq RM on the `mini` model (vLLM's CPU attention needs a head size of 32 or more)."""
    from seq2seq_rm.config import RMTrainConfig
    from seq2seq_rm.models.tiny import build_tiny_model
    from seq2seq_rm.rewards.train import train_reward_model

    tmp = tmp_path_factory.mktemp("served")
    texts = [t for r in sample_rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    mini = build_tiny_model(texts, str(tmp / "mini"), size="mini", seed=0)
    cfg = RMTrainConfig(kind="seq2seq", model=str(mini), data=sample_file, out=str(tmp / "rm"), limit=64,
                        train=train_options(epochs=2.0, batch_size=8, lr=3e-3))
    return str(train_reward_model(cfg))


@pytest.fixture(scope="module")
def url(rm_dir, tmp_path_factory):
    # the local RM's window (mini: 1024), so that both cut long rows alike
    with vllm_server(rm_dir, tmp_path_factory.mktemp("vllm") / "server.log", max_model_len=1024) as u:
        yield u


@pytest.fixture(scope="module")
def batch(sample_rows, rm_dir):
    rows = sample_rows[:12]
    prompts = [r["prompt"] for r in rows]
    responses = [r["chosen"] if i % 2 else r["rejected"] for i, r in enumerate(rows)]
    local = load_reward_model(rm_dir)
    ids, mask = encode_responses(responses, local.tokenizer)
    return prompts, responses, ids, mask


OPTIONS = [dict(magnitude=m, rematch=r, normalize=n) for m, r, n in
           itertools.product(["constant", "prob", "logratio"], ["zero", "positive"], ["none", "mean"])]


def test_served_rewards_equal_the_local_extraction_for_every_option(rm_dir, url, batch):
    prompts, _, ids, mask = batch
    local = load_reward_model(rm_dir)
    served = load_reward_model(rm_dir, server=url)
    assert served.model_name == rm_dir and served.max_length == local.max_length
    agreed = 0
    for opts in OPTIONS + [dict(magnitude="prob", clip=0.3)]:
        local.extraction = served.extraction = dataclasses.replace(local.extraction, **opts)
        a = local.token_rewards(prompts, ids, mask)
        b = served.token_rewards(prompts, ids, mask)
        assert torch.equal(a.agree, b.agree), opts
        assert torch.equal(a.predicted_ids, b.predicted_ids), opts
        assert torch.allclose(a.rewards, b.rewards, atol=ATOL), (opts, float((a.rewards - b.rewards).abs().max()))
        agreed = int(a.agree.sum())
    assert 0 < agreed < int(mask.sum())  # both verdicts occur, so the comparison means something
    assert served.requests == len(OPTIONS) + 1  # one completions call per batch


def test_rm_score_with_rm_server_writes_the_local_scores(rm_dir, url, batch, tmp_path):
    from seq2seq_rm.cli import main

    prompts, responses, _, _ = batch
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)])
    main(["rm", "score", "--rm", rm_dir, "--data", data, "--out", str(tmp_path / "local.json"), "--show", "0"])
    main(["rm", "score", "--rm", rm_dir, "--data", data, "--out", str(tmp_path / "served.json"), "--show", "0",
          "--rm-server", url])
    a, b = (json.loads((tmp_path / f).read_text())["rows"] for f in ("local.json", "served.json"))
    assert len(a) == len(b) == len(prompts)
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"]
        assert x["rewards"] == pytest.approx(y["rewards"], abs=ATOL)


def test_ppo_scores_with_the_served_rm(rm_dir, url, tmp_path):
    """PPO with rm_server: the RM is not loaded locally, and the run's rewards are the server's."""
    from seq2seq_rm.rewards.served import ServedSeq2SeqRewardModel
    from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer
    from seq2seq_rm.rl.rollout import SamplingConfig

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question number {i}?"} for i in range(8)])
    cfg = PPOConfig(policy=rm_dir, rm=rm_dir, rm_server=url, prompts=prompts, out=str(tmp_path / "out"), steps=2,
                    batch_size=4, mini_batch_size=4, save_every=0, sample_every=0,
                    sampling=SamplingConfig(max_new_tokens=8))
    trainer = PPOTrainer(cfg)
    assert isinstance(trainer.rm, ServedSeq2SeqRewardModel) and trainer.rm.model is None
    trainer.train()
    assert trainer.rm.requests == 2
    metrics = [json.loads(line) for line in (tmp_path / "out.run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]


def test_a_scalar_rm_cannot_be_served(scalar_rm_dir):
    with pytest.raises(ConfigError, match="scores seq2seq RMs only"):
        load_reward_model(scalar_rm_dir, server="http://127.0.0.1:9/v1")
