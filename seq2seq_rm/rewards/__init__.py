"""Reward models. Both kinds answer one question (see ``base.RewardModel``):
given prompts and response token ids, what reward does each response token get?"""

from .base import RewardModel, TokenRewards, load_reward_model

__all__ = ["RewardModel", "TokenRewards", "load_reward_model"]
