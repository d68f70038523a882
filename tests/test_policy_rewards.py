"""seq2seq_rm.rewards.policy: token rewards of a policy's responses, cut rows included (the function
shared by the verl reward manager; PPO's `rewards()` does the same, tests/test_ppo_corners.py)."""

from __future__ import annotations

import pytest
import torch

from seq2seq_rm.errors import ConfigError
from seq2seq_rm.rewards.base import TokenRewards
from seq2seq_rm.rewards.policy import append_eos, check_same_tokenizer, policy_token_rewards

EOS = 99


class _Tok:
    eos_token_id = EOS

    def __init__(self, vocab=None, eos=EOS):
        self.vocab = vocab or {"a": 1}
        self.eos_token_id = eos

    def get_vocab(self):
        return self.vocab


class _IdRM:
    """Reward = token id + 1 at real tokens: every position's reward names the token it belongs to."""

    tokenizer = _Tok()

    def __init__(self):
        self.seen = []

    def token_rewards(self, prompts, ids, mask):
        self.seen.append((ids.clone(), mask.clone()))
        return TokenRewards(rewards=torch.where(mask, ids.float() + 1, 0.0), mask=mask)


def _batch():
    ids = torch.tensor([[5, 6, EOS, 0], [5, 6, 7, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    finished = torch.tensor([True, False, False])
    return ids, mask, finished


def test_append_eos_writes_after_the_last_real_token_of_the_chosen_rows():
    ids, mask, finished = _batch()
    new_ids, new_mask = append_eos(ids, mask, ~finished, EOS)
    assert new_ids.tolist() == [[5, 6, EOS, 0, 0], [5, 6, 7, EOS, 0], [1, 2, 3, 4, EOS]]
    assert new_mask.sum(-1).tolist() == [3, 4, 5]


def test_cut_rows_get_their_missing_eos_reward_on_the_last_real_token():
    ids, mask, finished = _batch()
    rm = _IdRM()
    r = policy_token_rewards(rm, ["p"] * 3, ids, mask, finished)
    assert r.tolist() == [[6, 7, EOS + 1, 0], [6, 7, 8 + EOS + 1, 0], [2, 3, 4, 5 + EOS + 1]]
    seen_ids, seen_mask = rm.seen[-1]
    assert seen_ids[1, 3] == EOS and seen_ids[2, 4] == EOS and seen_mask.sum(-1).tolist() == [3, 4, 5]


def test_as_is_scores_the_cut_tokens_alone_and_the_penalty_hits_cut_rows_only():
    ids, mask, finished = _batch()
    rm = _IdRM()
    r = policy_token_rewards(rm, ["p"] * 3, ids, mask, finished, score_unfinished="as_is", missing_eos_penalty=0.5)
    assert r.tolist() == [[6, 7, EOS + 1, 0], [6, 7, 7.5, 0], [2, 3, 4, 4.5]]
    assert torch.equal(rm.seen[-1][0], ids)  # nothing appended
    with pytest.raises(ConfigError, match="score_unfinished"):
        policy_token_rewards(rm, ["p"] * 3, ids, mask, finished, score_unfinished="eos")


def test_a_different_tokenizer_is_refused():
    check_same_tokenizer(_Tok(), _Tok(), "policy", "rm")
    with pytest.raises(ConfigError, match="differs from the policy"):
        check_same_tokenizer(_Tok({"a": 1}), _Tok({"a": 2}), "policy", "rm")
    with pytest.raises(ConfigError, match="differs from the policy"):
        check_same_tokenizer(_Tok(), _Tok(eos=3), "policy", "rm")
