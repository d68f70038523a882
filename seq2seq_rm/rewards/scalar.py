"""Scalar (sequence-to-scalar) Bradley-Terry reward model: the paper's baseline.

Trained with ``L_BT = -log sigmoid(r(x, y_w) - r(x, y_l))`` (TRL's RewardTrainer) on the
same preference pairs, with input ``P(x) ++ R(y)`` (data/templates.py). Inside the
project its reward comes through the same (B, T) interface as the seq2seq RM: zeros
everywhere except the last response token, which carries the sequence score.
"""

from __future__ import annotations

import torch

from ..config import TemplateConfig
from ..data.records import PreferenceRecord, Prompt
from ..data.templates import encode_response, encode_text, render_prompt, resolve_style
from ..errors import Seq2SeqRMError
from ..layout import concat, fit_to_length, left_pad, pack_right, unpack
from ..training import ExampleStats
from .base import RewardModelBase, TokenRewards


def build_pair_examples(
    records: list[PreferenceRecord], tokenizer, template: TemplateConfig, max_length: int, truncation: str = "truncate"
) -> tuple[list[dict], ExampleStats]:
    """``{"chosen_ids", "rejected_ids"}`` examples for Bradley-Terry training (prompt cut from the left if too long)."""
    style = resolve_style(template, tokenizer)
    stats = ExampleStats(pairs=len(records))
    examples = []
    for rec in records:
        prompt = encode_text(render_prompt(rec.prompt, template, tokenizer, style), tokenizer, style)
        sides = []
        for text in (rec.chosen, rec.rejected):
            p, r, status = fit_to_length(prompt, encode_response(text, tokenizer), max_length, truncation)
            sides.append((p, r, status))
        if any(s == "skipped" for _, _, s in sides):
            stats.skipped_too_long += 1
            continue
        stats.truncated += any(s == "truncated" for _, _, s in sides)
        examples.append({"chosen_ids": sides[0][0] + sides[0][1], "rejected_ids": sides[1][0] + sides[1][1]})
    if not examples:
        raise Seq2SeqRMError(f"no training pairs left: all were longer than max_length={max_length}")
    return examples, stats


def last_token_scores(model, input_ids, attention, position_ids, last_index: torch.Tensor) -> torch.Tensor:
    """Score head applied at ``last_index`` (B,) of each row of ``input_ids`` (B, L) -> (B,).

    Reads the hidden state at an explicit position rather than relying on the
    ``pad_token_id`` search of ``*ForSequenceClassification``, so a tokenizer whose pad
    equals EOS cannot silently move the score.
    """
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention, position_ids=position_ids).last_hidden_state
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]  # (B, H)
    return model.score(h).squeeze(-1).float()


class ScalarRewardModel(RewardModelBase):
    """Bradley-Terry RM exposed through the token-reward interface."""

    kind = "scalar"

    @staticmethod
    def load_model(path: str, trust_remote_code: bool = False, dtype="float32"):
        from ..models.loading import load_sequence_classifier

        return load_sequence_classifier(path, num_labels=1, trust_remote_code=trust_remote_code, dtype=dtype)

    @torch.inference_mode()
    def scores(self, prompts: list[Prompt], response_ids: torch.Tensor, response_mask: torch.Tensor):
        """Sequence scores (B,) for responses (B, T); also returns the packing used."""
        packed, packed_mask, order = pack_right(response_ids, response_mask, self.pad_id)
        lengths = packed_mask.sum(-1)
        if (lengths == 0).any():
            raise Seq2SeqRMError("cannot score an empty response (no tokens)")
        prompts_ids, n_truncated = [], 0
        for p, n in zip(prompts, lengths.tolist(), strict=True):
            ids = encode_text(render_prompt(p, self.template, self.tokenizer, self.style), self.tokenizer, self.style)
            ids, _, status = fit_to_length(ids, [0] * n, self.max_length, "truncate")
            if len(ids) + n > self.max_length:
                raise Seq2SeqRMError(f"a response of {n} tokens does not fit the reward model's window")
            n_truncated += status == "truncated"
            prompts_ids.append(ids)
        p_ids, p_mask = left_pad(prompts_ids, self.pad_id)
        dev = self.device
        input_ids, attention, pos = (x.to(dev) for x in concat(p_ids, p_mask, packed, packed_mask))
        last = (p_ids.shape[1] + lengths - 1).to(dev)
        return last_token_scores(self.model, input_ids, attention, pos, last).cpu(), lengths, order, n_truncated

    def token_rewards(self, prompts: list[Prompt], response_ids: torch.Tensor, response_mask: torch.Tensor) -> TokenRewards:
        """(B, T) rewards: the sequence score on each row's last real token, zeros elsewhere."""
        s, lengths, order, n_truncated = self.scores(prompts, response_ids, response_mask)
        packed = torch.zeros((len(s), int(lengths.max())), dtype=torch.float32)
        packed[torch.arange(len(s)), lengths - 1] = s
        return TokenRewards(
            rewards=unpack(packed, order, response_ids.shape, 0.0),
            mask=response_mask.bool(),
            n_truncated=n_truncated,
        )
