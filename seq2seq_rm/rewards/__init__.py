"""Reward models. Both kinds answer one question (see ``base.RewardModel``):
given prompts and response token ids, what reward does each response token get?"""

from __future__ import annotations

from pathlib import Path

from ..config import ExtractionConfig, TemplateConfig, from_dict
from ..errors import ConfigError, ModelError
from .base import META_FILE, RewardModel, TokenRewards, read_meta
from .scalar import ScalarRewardModel
from .seq2seq import Seq2SeqRewardModel

KINDS = {"seq2seq": Seq2SeqRewardModel, "scalar": ScalarRewardModel}


def load_reward_model(path: str | Path, device=None, trust_remote_code: bool = False, dtype="float32",
                      server: str | None = None, server_key_env: str | None = None):
    """Load an RM folder written by ``seq2seq-rm rm train`` (either kind), its weights in ``dtype``.

    ``server``: instead of loading the weights, score with a vLLM server (``http://HOST:PORT/v1``)
    that serves this folder (``rewards/served.py``; seq2seq RMs only); ``server_key_env`` names the
    environment variable holding its API key, if it has one."""
    meta = read_meta(path)
    cls = KINDS.get(meta.get("kind"))
    if cls is None:
        raise ModelError(f"{Path(path) / META_FILE}: unknown kind {meta.get('kind')!r} (expected seq2seq or scalar)")
    template = from_dict(TemplateConfig, meta.get("template", {}))
    extraction = from_dict(ExtractionConfig, meta.get("extraction", {}))
    if server:
        if cls is not Seq2SeqRewardModel:
            raise ConfigError(f"{path} is a {meta.get('kind')} RM; a vLLM server (rm_server) scores seq2seq RMs only "
                              "(their LM head is what vLLM serves): load the scalar RM locally")
        from .served import ServedSeq2SeqRewardModel

        return ServedSeq2SeqRewardModel.connect(path, server, template, extraction, trust_remote_code, server_key_env)
    return cls.from_folder(path, template, extraction, device, trust_remote_code, dtype=dtype)


__all__ = ["KINDS", "RewardModel", "ScalarRewardModel", "Seq2SeqRewardModel", "TokenRewards", "load_reward_model"]
