"""The reward-model interface PPO and evaluation depend on, and the RM folder format.

An RM folder is a normal ``save_pretrained`` folder (safetensors weights, tokenizer)
plus ``seq2seq_rm.json``::

    {"kind": "seq2seq" | "scalar", "template": {...}, "extraction": {...},
     "max_length": 512, "base_model": "...", "data": {...load report...}, "train": {...}}

so that scoring lays tokens out exactly as training did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..config import ExtractionConfig, TemplateConfig
from ..data.records import Prompt
from ..data.templates import encode_response, resolve_style
from ..errors import ModelError
from ..layout import pad_id, right_pad

META_FILE = "seq2seq_rm.json"


@dataclass
class TokenRewards:
    """Per-token rewards aligned with the response ids they were computed for.

    Shapes: ``rewards`` (B, T) float, 0 at padding; ``mask`` (B, T) bool, True at real
    response tokens; ``agree`` (B, T) bool and ``predicted_ids`` (B, T) long are given by
    the seq2seq RM only: whether the RM would have written that token, and which token it
    would have written. ``n_truncated`` counts rows whose RM input was cut to fit.
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    agree: torch.Tensor | None = None
    predicted_ids: torch.Tensor | None = None
    n_truncated: int = 0

    def sequence_scores(self, how: str = "sum") -> torch.Tensor:
        """One score per response, shape (B,): ``sum`` | ``mean`` of token rewards, or ``agree_fraction``."""
        n = self.mask.sum(-1).clamp(min=1)
        if how == "sum":
            return self.rewards.sum(-1)
        if how == "mean":
            return self.rewards.sum(-1) / n
        if how == "agree_fraction":
            if self.agree is None:
                raise ValueError("agree_fraction needs a seq2seq RM")
            return (self.agree & self.mask).sum(-1) / n
        raise ValueError(f"unknown sequence score {how!r}: sum | mean | agree_fraction")


class RewardModel(Protocol):
    """What every reward model provides. ``kind`` is "seq2seq" or "scalar"."""

    kind: str
    tokenizer: object
    template: TemplateConfig
    extraction: ExtractionConfig

    def token_rewards(
        self, prompts: list[Prompt], response_ids: torch.Tensor, response_mask: torch.Tensor
    ) -> TokenRewards:
        """Rewards for ``response_ids`` (B, T) (left- or right-padded; ``response_mask`` marks real
        tokens) given their ``prompts``; returns tensors of the same (B, T) layout."""
        ...


def encode_responses(responses: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``R(y)`` ids (B, T) and mask (B, T) for response texts (EOS appended)."""
    return right_pad([encode_response(r, tokenizer) for r in responses], pad_id(tokenizer))


class RewardModelBase:
    """What both RM kinds share: the model in eval mode, its tokenizer, the layout it was trained
    with (``template``, ``style``), the extraction options, its window and pad id.

    Subclasses set ``kind``, implement ``load_model`` (a static method loading their model
    class from a folder) and ``token_rewards``.
    """

    kind = ""

    @staticmethod
    def load_model(path: str, trust_remote_code: bool = False, dtype="float32"):
        raise NotImplementedError

    def __init__(self, model, tokenizer, template: TemplateConfig, extraction: ExtractionConfig | None = None,
                 max_length: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.extraction = extraction or ExtractionConfig()
        self.style = resolve_style(template, tokenizer)
        window = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_length = min(window, max_length or window)
        self.pad_id = pad_id(tokenizer)

    @classmethod
    def from_folder(cls, path, template, extraction, device=None, trust_remote_code: bool = False, dtype="float32"):
        """The RM in ``path`` (a ``save_pretrained`` folder) in ``dtype`` (a name of the ``dtype``
        option or a torch dtype), moved to ``device``."""
        from ..models.loading import load_tokenizer

        tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        model = cls.load_model(str(path), trust_remote_code=trust_remote_code, dtype=dtype)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, template, extraction)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ModelError(
            f"{path} is not a reward model folder: {META_FILE} is missing "
            "(train one with `seq2seq-rm rm train`)"
        )
    try:
        return json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{meta_file}: not valid JSON: {e}") from None
