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

import random

import torch

from ..config import ExtractionConfig, MappingConfig, TemplateConfig
from ..data.records import PreferenceRecord, Prompt
from ..data.templates import encode_response, encode_text, render_source, resolve_style
from ..errors import ConfigError, Seq2SeqRMError
from ..layout import fit_to_length, left_pad, pack_right, response_logits, unpack
from ..training import ExampleStats
from .base import RewardModelBase, TokenRewards

# --------------------------------------------------------------------------------------
# Training examples
# --------------------------------------------------------------------------------------


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
    return token_rewards_from_stats(y_logit - lse, y_logit - max_logit, y_logit >= max_logit, argmax, targets,
                                    mask, cfg)


def token_rewards_from_stats(
    logp_y: torch.Tensor, logp_gap: torch.Tensor, greedy: torch.Tensor, argmax: torch.Tensor,
    targets: torch.Tensor, mask: torch.Tensor, cfg: ExtractionConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rewards from what the extraction needs of the RM at every response position, however
    it was obtained (teacher-forced logits here, a vLLM server's prompt log-probs in
    ``rewards/served.py``). All (B, T):

        logp_y:   float, log p(y_t) under the RM;
        logp_gap: float, log p(y_t) - log p(argmax_t) (<= 0; the logratio magnitude);
        greedy:   bool, y_t is a greedy choice of the RM (ties count as agreement);
        argmax:   long, the RM's greedy token;
        targets, mask: the response ids and their mask.
    Returns rewards, agree, predicted as :func:`token_rewards_from_logits` describes.
    """
    agree = greedy & mask
    predicted = torch.where(agree | ~mask, targets, argmax)  # padding keeps its (pad) id, whatever the RM says there

    if cfg.magnitude == "constant":
        r = torch.where(agree, cfg.r_pos, -cfg.r_neg)
    elif cfg.magnitude == "prob":
        p_y = logp_y.exp()
        r = torch.where(agree, p_y, -(1.0 - p_y))
    elif cfg.magnitude == "logratio":
        r = torch.where(agree, torch.full_like(logp_y, cfg.r_pos), logp_gap)  # log p(y) - log p(argmax)
    else:
        raise ConfigError(f"extraction.magnitude must be constant, prob or logratio, not {cfg.magnitude!r}")
    r = r.to(logp_y.dtype)

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


# --------------------------------------------------------------------------------------
# The reward model
# --------------------------------------------------------------------------------------


class Seq2SeqRewardModel(RewardModelBase):
    """A causal LM trained with Correction + Identity Mappings, scoring responses token by token."""

    kind = "seq2seq"

    @staticmethod
    def load_model(path: str, trust_remote_code: bool = False, dtype="float32"):
        from ..models.loading import load_causal_lm

        return load_causal_lm(path, trust_remote_code=trust_remote_code, dtype=dtype)

    def sources(self, prompts: list[Prompt], responses_text: list[str]) -> list[list[int]]:
        return [
            encode_text(render_source(p, r, self.template, self.tokenizer, self.style), self.tokenizer, self.style)
            for p, r in zip(prompts, responses_text, strict=True)
        ]

    @torch.no_grad()
    def rewrite(self, prompts: list[Prompt], responses: list[str], max_new_tokens: int = 64) -> list[str]:
        """The RM's own version of each response: its greedy continuation of ``S(x, y)``, the
        "language feedback" its token rewards compare against (decoded, special tokens dropped)."""
        sources = []
        for src in self.sources(prompts, responses):
            src, _, _ = fit_to_length(src, [0] * max_new_tokens, self.max_length, "truncate")
            sources.append(src)
        ids, mask = left_pad(sources, self.pad_id)
        eos = self.tokenizer.eos_token_id
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.long().to(self.device),
                                  max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                  pad_token_id=self.pad_id, bos_token_id=None)
        texts = []
        for row in out[:, ids.shape[1]:].tolist():
            texts.append(self.tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True))
        return texts

    @torch.inference_mode()
    def token_rewards(self, prompts: list[Prompt], response_ids: torch.Tensor, response_mask: torch.Tensor) -> TokenRewards:
        """Rewards (B, T) for ``response_ids`` (B, T) given ``prompts`` — one forward pass.

        The response text shown in the source is decoded from the same ids (special tokens
        dropped), so the RM reviews exactly what it scores.
        """
        if len(prompts) != response_ids.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {response_ids.shape[0]} responses")
        shape = response_ids.shape
        packed, packed_mask, order, sources, n_truncated = self.layout(prompts, response_ids, response_mask)
        r, agree, pred = self.score_layout(sources, packed, packed_mask)
        return TokenRewards(
            rewards=unpack(r, order, shape, 0.0),
            mask=response_mask.bool(),
            agree=unpack(agree, order, shape, False),
            predicted_ids=unpack(pred, order, shape, self.pad_id),
            n_truncated=n_truncated,
        )

    def layout(self, prompts: list[Prompt], response_ids: torch.Tensor, response_mask: torch.Tensor):
        """The RM's inputs for ``response_ids`` (B, T): the responses right-packed (B, T') with
        their mask and the row order to undo it (``layout.pack_right``), and each row's source
        ``S(x, y)`` as token ids, cut from the left to fit the window with its response; also the
        number of rows cut."""
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
        return packed, packed_mask, order, sources, n_truncated

    def score_layout(self, sources: list[list[int]], packed: torch.Tensor, packed_mask: torch.Tensor):
        """Rewards, agree, predicted (B, T') for right-packed responses after their sources: one
        teacher-forced forward pass of the local model."""
        src_ids, src_mask = left_pad(sources, self.pad_id)
        dev = self.device
        logits = response_logits(self.model, src_ids.to(dev), src_mask.to(dev), packed.to(dev), packed_mask.to(dev))
        r, agree, pred = token_rewards_from_logits(logits, packed.to(dev), packed_mask.to(dev), self.extraction)
        return r.cpu(), agree.cpu(), pred.cpu()
