"""Token layout: how id sequences become model inputs, in one place.

Every stage lays tokens out the same way, so every stage uses these functions:

* :func:`fit_to_length` makes ``source ++ target`` fit a window (explicit, counted policy);
* :func:`left_pad` / :func:`right_pad` build (B, L) id and mask tensors;
* :func:`pack_right` / :func:`unpack` move real tokens to the front of each row and back;
* :func:`concat` joins a left-padded prefix (prompt or RM source) and a right-padded
  response, ``[prefix | response]``, with position ids counted from each row's first real
  token, so that every response starts at the same column ``P`` and left padding never
  shifts positions;
* :func:`response_logits` runs one forward pass over that layout and returns the logits
  that predict the response tokens, with one slice for the whole batch;
* :func:`pad_id` is the one rule for the id written into padding.

Conventions: a prefix is (B, P) and flush right; a response is (B, T) and flush left; masks
are bool and True at real tokens. ``logits[:, t]`` predicts ``response[:, t]``.
"""

from __future__ import annotations

import inspect

import torch

from .errors import ConfigError

MIN_SOURCE_TOKENS = 8  # a prompt/source cut shorter than this no longer says what is being scored
TRUNCATION_POLICIES = ("truncate", "skip")


def pad_id(tokenizer) -> int:
    """The id written into padding: the tokenizer's pad token, else its EOS, else 0.

    Padding is always masked (attention and losses), so any id works; a real token id keeps
    embedding look-ups in range.
    """
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def fit_to_length(source: list[int], target: list[int], max_length: int, policy: str):
    """Make ``source ++ target`` fit in ``max_length`` tokens.

    ``truncate`` keeps the target whole and cuts the source from the LEFT (its end holds the
    response under review or the generation cue); if the target alone leaves fewer than
    ``MIN_SOURCE_TOKENS`` of room, the target is cut from the right too. ``skip`` drops the
    example. Returns ``(source, target, status)`` with status ``ok`` | ``truncated`` |
    ``skipped`` (source and target are None when skipped).
    """
    if len(source) + len(target) <= max_length:
        return source, target, "ok"
    if policy == "skip":
        return None, None, "skipped"
    if policy != "truncate":
        raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION_POLICIES)}, not {policy!r}")
    if max_length <= MIN_SOURCE_TOKENS:
        raise ConfigError(f"max_length must be more than {MIN_SOURCE_TOKENS} tokens, got {max_length}")
    keep = min(len(source), max(MIN_SOURCE_TOKENS, max_length - len(target)))
    return source[len(source) - keep :], target[: max_length - keep], "truncated"


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and bool mask with each sequence flush right (padding on the left)."""
    return _pad(seqs, pad, left=True)


def right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and bool mask with each sequence flush left (padding on the right)."""
    return _pad(seqs, pad, left=False)


def _pad(seqs: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            cols = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, cols] = torch.tensor(s, dtype=torch.long)
            mask[i, cols] = True
    return ids, mask


def pack_right(ids: torch.Tensor, mask: torch.Tensor, pad: int):
    """Move every row's real tokens to the front, in order.

    ids, mask: (B, T) with padding anywhere (left or right). Returns ``packed`` (B, T'),
    ``packed_mask`` (B, T'), ``order`` (B, T) where T' is the longest row, and
    ``packed[b, j] = ids[b, order[b, j]]``. :func:`unpack` inverts it with a scatter.
    """
    mask = mask.bool()
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    packed = torch.gather(ids, 1, order)
    packed_mask = torch.gather(mask, 1, order)
    t_max = int(mask.sum(-1).max().item()) if mask.numel() else 0
    packed = packed[:, :t_max].masked_fill(~packed_mask[:, :t_max], pad)
    return packed, packed_mask[:, :t_max], order


def unpack(packed_values: torch.Tensor, order: torch.Tensor, shape, fill=0) -> torch.Tensor:
    """Inverse of :func:`pack_right` for per-token values: (B, T') -> (B, T) in the original layout."""
    out = torch.full(shape, fill, dtype=packed_values.dtype, device=packed_values.device)
    t = packed_values.shape[1]
    out.scatter_(1, order[:, :t], packed_values)
    return out


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions counted from each row's first real token (0 on left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def concat(prefix_ids, prefix_mask, response_ids, response_mask):
    """``[prefix | response]``: returns ``(input_ids, attention_mask, position_ids)``, each (B, P+T).

    prefix: (B, P) flush right; response: (B, T) flush left. ``attention_mask`` is long (what
    the models expect).
    """
    input_ids = torch.cat([prefix_ids, response_ids], dim=1)
    attention = torch.cat([prefix_mask, response_mask], dim=1).long()
    return input_ids, attention, position_ids(attention)


def response_slice(x: torch.Tensor, prefix_len: int, t: int) -> torch.Tensor:
    """The positions of a (B, P+T, ...) output that PREDICT the T response tokens: ``[P-1, P-1+T)``.

    Position ``P-1+t`` has read the prefix and ``response[:, :t]``, i.e. the state ``s_t``
    before response token ``t``: the logits there predict it, and a critic's value there is V(s_t).
    """
    return x[:, prefix_len - 1 : prefix_len - 1 + t]


def response_logits(model, prefix_ids, prefix_mask, response_ids, response_mask) -> torch.Tensor:
    """(B, T, V) logits of one forward pass over ``[prefix | response]``; ``[:, t]`` predicts
    ``response[:, t]``. Only the last T+1 positions go through the LM head when the model
    accepts ``logits_to_keep``."""
    input_ids, attention, pos = concat(prefix_ids, prefix_mask, response_ids, response_mask)
    t = response_ids.shape[1]
    if _accepts_logits_to_keep(model):
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=pos, logits_to_keep=t + 1)
        return out.logits[:, :t]
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=pos)
    return response_slice(out.logits, prefix_ids.shape[1], t)


def _accepts_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` can skip the LM head on positions we do not read.

    Wrappers (DDP's ``module``, a peft model's base model) pass keyword arguments through, so
    the wrapped model's signature decides.
    """
    inner = getattr(model, "module", model)
    get_base = getattr(inner, "get_base_model", None)
    if callable(get_base):
        inner = get_base()
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False
