"""PPO right in the corners, each checked against an independent computation:

* log-probs and values of a padded batch equal an unpadded forward pass of each row (Llama
  with rotary positions and GPT-2 with absolute position embeddings), at the sampling temperature;
* advantages are whitened over real response tokens only;
* the update does not depend on how a minibatch is cut into micro-batches;
* a response cut at max_new_tokens is scored with the EOS it lacks and pays missing_eos_penalty.
"""

from __future__ import annotations

import pytest
import torch
from helpers import write_jsonl

from seq2seq_rm.models.loading import load_tokenizer
from seq2seq_rm.rewards.base import TokenRewards
from seq2seq_rm.rl import losses as L
from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer
from seq2seq_rm.rl.rollout import SamplingConfig

PROMPTS = ["Hi.", "What is two plus two?", "How do I fix a bike tyre that keeps going flat, please?",
           "Name a colour.", "Tell me a fact about the moon and the tides.", "Say hello.", "Count to three.",
           "What is the capital of France?"]


class DenseRM:
    """0.5 for every token, 1.0 for an EOS; records what it was asked to score. Scores under
    ``inference_mode`` like the real reward models, so PPO gets inference tensors it must not
    modify in place."""

    kind = "seq2seq"

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, []

    @torch.inference_mode()
    def token_rewards(self, prompts, ids, mask):
        self.seen.append((ids.clone(), mask.clone()))
        r = torch.where(ids == self.tokenizer.eos_token_id, 1.0, 0.5)
        return TokenRewards(rewards=torch.where(mask, r, 0.0), mask=mask)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "p.jsonl", [{"prompt": p} for p in PROMPTS])


def _trainer(policy, prompts, out, **kw) -> PPOTrainer:
    cfg = dict(policy=policy, prompts=prompts, out=str(out), steps=1, batch_size=8, mini_batch_size=8, ppo_epochs=1,
               actor_lr=1e-3, critic_lr=1e-3, kl_coef=0.05, save_every=0, sample_every=0,
               sampling=SamplingConfig(max_new_tokens=12, temperature=0.7))
    cfg.update(kw)
    return PPOTrainer(PPOConfig(**cfg), reward_model=DenseRM(load_tokenizer(policy)))


def _rows(b):
    """Each row's real prompt ids and real response ids (padding removed)."""
    for i in range(len(b.prompts)):
        yield i, b.prompt_ids[i][b.prompt_mask[i]].tolist(), b.response_ids[i][b.response_mask[i]].tolist()


@torch.no_grad()
def _unpadded(model, critic, prompt, response, temperature):
    """Log-probs of the response tokens and values V(s_t) from ONE unpadded row: no attention
    mask, no position ids, nothing shared with the code under test."""
    ids = torch.tensor([prompt + response])
    p, n = len(prompt), len(response)
    logits = model(input_ids=ids).logits[0, p - 1 : p - 1 + n].float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]
    values = critic(input_ids=ids)[0, p - 1 : p - 1 + n]
    return logp, values


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_logprobs_and_values_match_an_unpadded_forward_at_the_sampling_temperature(
        which, sft_policy_dir, gpt2_model_dir, prompts_file, tmp_path):
    policy = sft_policy_dir if which == "llama" else gpt2_model_dir
    trainer = _trainer(policy, prompts_file, tmp_path / "p")
    actor, critic = trainer.acc.unwrap_model(trainer.actor), trainer.acc.unwrap_model(trainer.critic)
    with torch.no_grad():  # the value head starts at zero: give it weights, or every position reads alike
        critic.v_head.weight.normal_(0, 1.0)
    b = trainer.rollout(0)
    trainer.rewards(b)
    trainer.shape(b)
    assert not b.prompt_mask.all()  # prompts of different lengths: left padding is in play
    for i, prompt, response in _rows(b):
        logp, values = _unpadded(actor, critic, prompt, response, temperature=0.7)
        n = len(response)
        assert torch.allclose(b.logp[i, :n], logp, atol=1e-4), (which, i)
        assert torch.allclose(b.ref_logp[i, :n], logp, atol=1e-4)  # step 0: the reference is the policy
        assert torch.allclose(b.values[i, :n], values, atol=1e-4)


def test_advantages_are_whitened_over_real_response_tokens_only(sft_policy_dir, prompts_file, tmp_path):
    trainer = _trainer(sft_policy_dir, prompts_file, tmp_path / "p")
    b = trainer.rollout(0)
    trainer.rewards(b)
    trainer.shape(b)
    mask = b.response_mask
    assert not mask.all()  # responses of different lengths: some padding
    valid = b.advantages[mask]
    assert abs(float(valid.mean())) < 1e-5 and abs(float(valid.std()) - 1.0) < 1e-4
    assert (b.advantages[~mask] == 0).all()


def _weights(trainer):
    models = (trainer.acc.unwrap_model(trainer.actor), trainer.acc.unwrap_model(trainer.critic))
    return [p.detach().clone() for m in models for p in m.parameters()]


def _vary_lengths(b) -> None:
    """Cut the responses to different lengths (the update must not depend on how a batch of
    unequal responses is split, whatever the policy happened to sample)."""
    keep = torch.tensor([1, 3, 12, 5, 2, 9, 7, 4])[: len(b.prompts)]
    cols = torch.arange(b.response_mask.shape[1])
    b.response_mask = b.response_mask & (cols[None, :] < keep[:, None])
    b.response_ids = b.response_ids.masked_fill(~b.response_mask, 0)


def test_the_update_does_not_depend_on_how_a_minibatch_is_cut(sft_policy_dir, prompts_file, tmp_path):
    runs = []
    for grad_accum in (1, 2, 4):
        trainer = _trainer(sft_policy_dir, prompts_file, tmp_path / f"p{grad_accum}", grad_accum=grad_accum)
        b = trainer.rollout(0)
        _vary_lengths(b)
        trainer.rewards(b)
        trainer.shape(b)
        trainer.update(b)
        runs.append((b.response_mask.sum(-1), _weights(trainer)))
    lengths = runs[0][0]
    assert len(set(lengths.tolist())) > 1  # micro-batches hold different numbers of tokens
    for other_lengths, weights in runs[1:]:
        assert torch.equal(other_lengths, lengths)  # the same rollout each time
        for a, b in zip(runs[0][1], weights, strict=True):
            assert torch.allclose(a, b, atol=2e-5)  # float summation order only (Adam: updates ~1e-3)


@pytest.mark.parametrize("score_unfinished", ["append_eos", "as_is"])
def test_a_cut_response_is_scored_with_its_missing_eos_and_penalised(
        score_unfinished, sft_policy_dir, prompts_file, tmp_path):
    trainer = _trainer(sft_policy_dir, prompts_file, tmp_path / "p", missing_eos_penalty=2.0,
                       score_unfinished=score_unfinished, sampling=SamplingConfig(max_new_tokens=4, temperature=0.7))
    b = trainer.rollout(0)
    trainer.rewards(b)
    eos = trainer.tokenizer.eos_token_id
    seen_ids, seen_mask = trainer.rm.seen[-1]
    assert (~b.finished).any() and b.finished.any(), "need both finished and cut responses"
    for i in range(len(b.prompts)):
        n = int(b.response_mask[i].sum())
        rewards = b.rm_rewards[i, :n].tolist()
        if b.finished[i]:  # ends with its EOS: scored as it is
            assert int(seen_mask[i].sum()) == n and rewards == [0.5] * (n - 1) + [1.0]
        elif score_unfinished == "append_eos":  # the RM saw the response + EOS; the EOS's 1.0 lands on the last token
            assert int(seen_mask[i].sum()) == n + 1 and seen_ids[i, n].item() == eos
            assert rewards == [0.5] * (n - 1) + [0.5 + 1.0 - 2.0]
        else:
            assert int(seen_mask[i].sum()) == n and rewards == [0.5] * (n - 1) + [0.5 - 2.0]
        assert (b.rm_rewards[i, n:] == 0).all()


def test_one_extreme_token_cannot_put_inf_into_the_rewards():
    logp = torch.tensor([[-0.1, -1e4, float("-inf")]])
    ref = torch.tensor([[-0.2, -0.5, -0.3]])
    mask = torch.ones_like(logp, dtype=torch.bool)
    for estimator in L.KL_ESTIMATORS:
        shaped, kl = L.shape_rewards(torch.zeros_like(logp), logp, ref, mask, 0.1, estimator)
        assert torch.isfinite(shaped).all() and torch.isfinite(kl).all(), estimator
    kl = L.kl_estimate(torch.tensor([30.0, -30.0, 0.1]), torch.zeros(3), "k1")
    assert kl.tolist() == pytest.approx([20.0, -20.0, 0.1])  # the log-ratio is clamped to [-20, 20]
    k3 = L.kl_estimate(torch.tensor([-30.0, 0.1]), torch.zeros(2), "k3")
    assert k3[0] == 10.0 and k3[1] == pytest.approx(float(torch.expm1(torch.tensor(-0.1)) + 0.1))  # k3 <= 10
