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

from ..config import ExtractionConfig, TemplateConfig, from_dict
from ..data.records import Prompt
from ..data.templates import encode_response
from ..errors import ModelError

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
    ids = [torch.tensor(encode_response(r, tokenizer), dtype=torch.long) for r in responses]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(i, dtype=torch.bool) for i in ids], batch_first=True)
    return batch, mask


def pack_right(ids: torch.Tensor, mask: torch.Tensor, pad_id: int):
    """Move every row's real tokens to the front, in order.

    ids, mask: (B, T) with padding anywhere (left or right). Returns ``packed`` (B, T'),
    ``packed_mask`` (B, T'), ``order`` (B, T) where T' is the longest row, and
    ``packed[b, j] = ids[b, order[b, j]]``. ``unpack`` inverts it with a scatter.
    """
    mask = mask.bool()
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    packed = torch.gather(ids, 1, order)
    packed_mask = torch.gather(mask, 1, order)
    t_max = int(mask.sum(-1).max().item()) if mask.numel() else 0
    packed = packed[:, :t_max].masked_fill(~packed_mask[:, :t_max], pad_id)
    return packed, packed_mask[:, :t_max], order


def unpack(packed_values: torch.Tensor, order: torch.Tensor, shape, fill=0) -> torch.Tensor:
    """Inverse of ``pack_right`` for per-token values (B, T') -> (B, T) in the original layout."""
    out = torch.full(shape, fill, dtype=packed_values.dtype, device=packed_values.device)
    t = packed_values.shape[1]
    out.scatter_(1, order[:, :t], packed_values)
    return out


def load_parts(path, load_model, device=None, trust_remote_code: bool = False):
    """``(model, tokenizer)`` of an RM folder, the model loaded by ``load_model`` and moved to ``device``."""
    from ..models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
    model = load_model(str(path), trust_remote_code=trust_remote_code)
    if device is not None:
        model.to(device)
    return model, tokenizer


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


def load_reward_model(path: str | Path, device: str | torch.device | None = None, trust_remote_code: bool = False):
    """Load an RM folder written by ``seq2seq-rm rm train`` (either kind)."""
    meta = read_meta(path)
    template = from_dict(TemplateConfig, meta.get("template", {}))
    extraction = from_dict(ExtractionConfig, meta.get("extraction", {}))
    kind = meta.get("kind")
    if kind == "seq2seq":
        from .seq2seq import Seq2SeqRewardModel

        return Seq2SeqRewardModel.from_folder(path, template, extraction, device, trust_remote_code)
    if kind == "scalar":
        from .scalar import ScalarRewardModel

        return ScalarRewardModel.from_folder(path, template, extraction, device, trust_remote_code)
    raise ModelError(f"{Path(path) / META_FILE}: unknown kind {kind!r} (expected seq2seq or scalar)")
