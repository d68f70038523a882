"""Reward models. Both kinds answer one question (see ``base.RewardModel``):
given prompts and response token ids, what reward does each response token get?"""

from __future__ import annotations

from pathlib import Path

from ..config import ExtractionConfig, TemplateConfig, from_dict
from ..errors import ModelError
from .base import META_FILE, RewardModel, TokenRewards, read_meta
from .scalar import ScalarRewardModel
from .seq2seq import Seq2SeqRewardModel

KINDS = {"seq2seq": Seq2SeqRewardModel, "scalar": ScalarRewardModel}


def load_reward_model(path: str | Path, device=None, trust_remote_code: bool = False, dtype="float32"):
    """Load an RM folder written by ``seq2seq-rm rm train`` (either kind), its weights in ``dtype``."""
    meta = read_meta(path)
    cls = KINDS.get(meta.get("kind"))
    if cls is None:
        raise ModelError(f"{Path(path) / META_FILE}: unknown kind {meta.get('kind')!r} (expected seq2seq or scalar)")
    template = from_dict(TemplateConfig, meta.get("template", {}))
    extraction = from_dict(ExtractionConfig, meta.get("extraction", {}))
    return cls.from_folder(path, template, extraction, device, trust_remote_code, dtype=dtype)


__all__ = ["KINDS", "RewardModel", "ScalarRewardModel", "Seq2SeqRewardModel", "TokenRewards", "load_reward_model"]
