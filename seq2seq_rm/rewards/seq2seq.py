"""Seq2seq reward model: sequence-MLE training examples and token-level reward extraction.

Training (paper, "Seq2seq reward modeling"): from each preference pair ``(x, y_w, y_l)``

    Correction Mapping:  source S(x, y_l)  ->  target R(y_w)
    Identity Mapping:    source S(x, y_w)  ->  target R(y_w)

with next-token cross-entropy on target tokens only (the supervised trainer masks the
source through ``completion_mask``).

Extraction (paper, Figure 2; method.md "[ours]"): the response ``y`` is both in the
source and teacher-forced as the target, ``S(x, y) ++ y``, in ONE forward pass. At each
response position ``t`` the RM's greedy choice is ``argmax p(. | S(x, y), y_<t)``; up to the
first divergence that is exactly the RM's own greedy output, after it it is the response
"input token by token". A token the RM agrees with gets a positive reward, a diverging
token a negative one. See ``ExtractionConfig`` for the named open choices.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass

import torch

from ..config import ExtractionConfig, MappingConfig, TemplateConfig
from ..data.records import PreferenceRecord, Prompt
from ..data.templates import encode_response, encode_text, render_source, resolve_style
from ..errors import ConfigError, Seq2SeqRMError
from .base import TokenRewards, load_parts, pack_right, unpack

# --------------------------------------------------------------------------------------
# Length policy (shared with the scalar RM and SFT)
# --------------------------------------------------------------------------------------

MIN_SOURCE_TOKENS = 8  # a source cut shorter than this no longer says what is being scored


def fit_to_length(source: list[int], target: list[int], max_length: int, policy: str):
    """Make ``source ++ target`` fit in ``max_length`` tokens.

    ``truncate`` keeps the target whole and cuts the source from the LEFT (its end holds the
    response under review and the cue to rewrite); if the target alone leaves fewer than
    ``MIN_SOURCE_TOKENS`` of room, the target is cut from the right too. ``skip`` drops
    the example. Returns ``(source, target, status)`` with status ``ok`` | ``truncated`` |
    ``skipped`` (source and target are None when skipped).
    """
    if len(source) + len(target) <= max_length:
        return source, target, "ok"
    if policy == "skip":
        return None, None, "skipped"
    if policy != "truncate":
        raise ConfigError(f"train.truncation must be truncate or skip, not {policy!r}")
    keep = min(len(source), max(MIN_SOURCE_TOKENS, max_length - len(target)))
    return source[len(source) - keep :], target[: max_length - keep], "truncated"


# --------------------------------------------------------------------------------------
# Training examples
# --------------------------------------------------------------------------------------


@dataclass
class ExampleStats:
    pairs: int = 0
    correction: int = 0
    identity: int = 0
    truncated: int = 0
    skipped_too_long: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def build_seq2seq_examples(
    records: list[PreferenceRecord],
    tokenizer,
    template: TemplateConfig,
    mapping: MappingConfig,
    max_length: int,
    truncation: str = "truncate",
    seed: int = 0,
) -> tuple[list[dict], ExampleStats]:
    """Tokenised training examples ``{"input_ids", "completion_mask", "mapping"}`` for SFT-style training.

    ``completion_mask`` is 1 on target tokens (the only ones with a loss). Identity
    examples are drawn for a seeded ``mapping.identity_ratio`` share of pairs (1.0 = every
    pair, the paper's 1:1 mix; values above 1 repeat).
    """
    if not mapping.correction and mapping.identity_ratio <= 0:
        raise ConfigError("mapping: both mappings are off; enable correction or set identity_ratio > 0")
    style = resolve_style(template, tokenizer)
    rng = random.Random(seed)
    stats = ExampleStats(pairs=len(records))
    examples = []

    def add(prompt: Prompt, shown: str, target_text: str, kind: str):
        src = encode_text(render_source(prompt, shown, template, tokenizer, style), tokenizer, style)
        tgt = encode_response(target_text, tokenizer)
        src, tgt, status = fit_to_length(src, tgt, max_length, truncation)
        if status == "skipped":
            stats.skipped_too_long += 1
            return
        stats.truncated += status == "truncated"
        setattr(stats, kind, getattr(stats, kind) + 1)
        examples.append(
            {"input_ids": src + tgt, "completion_mask": [0] * len(src) + [1] * len(tgt), "mapping": kind}
        )

    for rec in records:
        if mapping.correction:
            add(rec.prompt, rec.rejected, rec.chosen, "correction")
        whole, frac = divmod(mapping.identity_ratio, 1.0)
        for _ in range(int(whole) + (rng.random() < frac)):
            add(rec.prompt, rec.chosen, rec.chosen, "identity")
    if not examples:
        raise Seq2SeqRMError(
            f"no training examples left: all {stats.skipped_too_long} were longer than max_length={max_length} "
            "(raise train.max_length or use train.truncation=truncate)"
        )
    return examples, stats


# --------------------------------------------------------------------------------------
# Extraction: pure tensor maths
# --------------------------------------------------------------------------------------


def token_rewards_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, cfg: ExtractionConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rewards from teacher-forced RM logits.

    Args:
        logits:  (B, T, V) RM logits; ``logits[b, t]`` predicts ``targets[b, t]``.
        targets: (B, T) the response token ids ``y``.
        mask:    (B, T) bool, True at real response tokens.
    Returns:
        rewards (B, T) float (0 at padding), agree (B, T) bool, predicted (B, T) long, where
        ``agree`` means ``y_t`` is a greedy choice of the RM (ties count as agreement) and
        ``predicted`` is the RM's greedy token (``y_t`` itself where it agrees).
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # (B, T); avoids materialising a (B, T, V) log-softmax
    max_logit, argmax = logits.max(dim=-1)  # (B, T)
    y_logit = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    agree = (y_logit >= max_logit) & mask
    predicted = torch.where(agree, targets, argmax)
    logp_y = y_logit - lse

    if cfg.magnitude == "constant":
        r = torch.where(agree, cfg.r_pos, -cfg.r_neg)
    elif cfg.magnitude == "prob":
        p_y = logp_y.exp()
        r = torch.where(agree, p_y, -(1.0 - p_y))
    elif cfg.magnitude == "logratio":
        r = torch.where(agree, torch.full_like(logp_y, cfg.r_pos), y_logit - max_logit)  # log p(y) - log p(argmax)
    else:
        raise ConfigError(f"extraction.magnitude must be constant, prob or logratio, not {cfg.magnitude!r}")
    r = r.to(logits.dtype)

    if cfg.rematch == "zero":
        disagree = (~agree & mask).int()
        after_divergence = (disagree.cumsum(-1) - disagree) > 0  # strictly after the first diverging token
        r = torch.where(agree & after_divergence, torch.zeros_like(r), r)
    elif cfg.rematch != "positive":
        raise ConfigError(f"extraction.rematch must be positive or zero, not {cfg.rematch!r}")

    if cfg.normalize == "mean":
        r = r / mask.sum(-1, keepdim=True).clamp(min=1)
    elif cfg.normalize != "none":
        raise ConfigError(f"extraction.normalize must be none or mean, not {cfg.normalize!r}")
    if cfg.clip is not None:
        r = r.clamp(-cfg.clip, cfg.clip)
    return torch.where(mask, r, torch.zeros_like(r)), agree, predicted


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) ids and mask with each sequence flush right (padding on the left)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = True
    return ids, mask


def forward_source_then_response(model, src_ids, src_mask, resp_ids, resp_mask) -> torch.Tensor:
    """One forward pass over ``[left-padded source | right-padded response]``.

    src_ids/src_mask: (B, S), flush right.  resp_ids/resp_mask: (B, T), flush left.
    Every response starts at column S, so ``logits[:, S-1 : S-1+T]`` predicts the response
    for the whole batch with one slice. Returns those logits, (B, T, V).
    """
    input_ids = torch.cat([src_ids, resp_ids], dim=1)
    attention = torch.cat([src_mask, resp_mask], dim=1)
    position_ids = (attention.long().cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
    t = resp_ids.shape[1]
    if _accepts_logits_to_keep(model):
        out = model(input_ids=input_ids, attention_mask=attention.long(), position_ids=position_ids, logits_to_keep=t + 1)
        return out.logits[:, :t]
    out = model(input_ids=input_ids, attention_mask=attention.long(), position_ids=position_ids)
    return out.logits[:, -(t + 1) : -1]


def _accepts_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` can skip the LM head on positions we do not read."""

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# The reward model
# --------------------------------------------------------------------------------------


class Seq2SeqRewardModel:
    """A causal LM trained with Correction + Identity Mappings, scoring responses token by token."""

    kind = "seq2seq"

    def __init__(self, model, tokenizer, template: TemplateConfig, extraction: ExtractionConfig, max_length=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.extraction = extraction
        self.style = resolve_style(template, tokenizer)
        limit = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_length = min(limit, max_length or limit)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_folder(cls, path, template, extraction, device=None, trust_remote_code=False):
        from ..models.loading import load_causal_lm

        model, tok = load_parts(path, load_causal_lm, device, trust_remote_code)
        return cls(model, tok, template, extraction)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sources(self, prompts: list[Prompt], responses_text: list[str]) -> list[list[int]]:
        return [
            encode_text(render_source(p, r, self.template, self.tokenizer, self.style), self.tokenizer, self.style)
            for p, r in zip(prompts, responses_text, strict=True)
        ]

    @torch.inference_mode()
    def token_rewards(self, prompts: list[Prompt], response_ids: torch.Tensor, response_mask: torch.Tensor) -> TokenRewards:
        """Rewards (B, T) for ``response_ids`` (B, T) given ``prompts`` — one forward pass.

        The response text shown in the source is decoded from the same ids (special tokens
        dropped), so the RM reviews exactly what it scores.
        """
        if len(prompts) != response_ids.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {response_ids.shape[0]} responses")
        shape = response_ids.shape
        packed, packed_mask, order = pack_right(response_ids, response_mask, self.pad_id)
        lengths = packed_mask.sum(-1).tolist()
        texts = self.tokenizer.batch_decode(
            [row[:n] for row, n in zip(packed.tolist(), lengths, strict=True)], skip_special_tokens=True
        )
        sources, n_truncated = [], 0
        for src, n in zip(self.sources(prompts, texts), lengths, strict=True):
            src, _, status = fit_to_length(src, [0] * n, self.max_length, "truncate")
            if len(src) + n > self.max_length:
                raise Seq2SeqRMError(
                    f"a response of {n} tokens does not fit the reward model's {self.max_length}-token window"
                )
            n_truncated += status == "truncated"
            sources.append(src)
        src_ids, src_mask = left_pad(sources, self.pad_id)
        dev = self.device
        logits = forward_source_then_response(
            self.model, src_ids.to(dev), src_mask.to(dev), packed.to(dev), packed_mask.to(dev)
        )
        r, agree, pred = token_rewards_from_logits(logits, packed.to(dev), packed_mask.to(dev), self.extraction)
        r, agree, pred = r.cpu(), agree.cpu(), pred.cpu()
        return TokenRewards(
            rewards=unpack(r, order, shape, 0.0),
            mask=response_mask.bool(),
            agree=unpack(agree, order, shape, False),
            predicted_ids=unpack(pred, order, shape, self.pad_id),
            n_truncated=n_truncated,
        )
