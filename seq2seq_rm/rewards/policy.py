"""Token rewards of a policy's own responses, the way every RL loop of the project gives them.

A policy's response is a row of its token ids, right-padded: real tokens first, then padding. A
*finished* row ends with the policy's EOS, which the RM scores like any other token (the RM saw
``R(y) = y + EOS`` in training). A *cut* row (generation stopped at the length budget, no EOS)
needs a choice, the same everywhere (PPO's ``score_unfinished`` / ``missing_eos_penalty`` options,
seq2seq_rm/rl/ppo.py; the verl reward manager, seq2seq_rm/integrations/verl):

* ``score_unfinished="append_eos"``: the RM scores the row as if the policy had stopped there (an
  EOS is appended for the RM only); the EOS's reward is no action of the policy, so it is added to
  the row's last real token. For the scalar RM this is its sequence score of the cut response with
  EOS, on the last real token.
* ``score_unfinished="as_is"``: the RM scores the cut tokens alone (the scalar RM then scores a
  sequence with no EOS, a layout it never saw in training).
* ``missing_eos_penalty=p``: ``p`` is subtracted from the last real token of every cut row (TRL's
  option of that name).

Rewards are zero at padding and have the shape of the response ids they were computed for.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

SCORE_UNFINISHED = ("append_eos", "as_is")


def check_same_tokenizer(policy_tok, rm_tok, policy: str, rm: str) -> None:
    """The RM scores the policy's token ids directly, so both must share one vocabulary and EOS."""
    if policy_tok.get_vocab() != rm_tok.get_vocab() or policy_tok.eos_token_id != rm_tok.eos_token_id:
        raise ConfigError(
            f"the reward model's tokenizer ({rm}) differs from the policy's ({policy}); token rewards are "
            "aligned to the policy's token ids, so train the RM from the SFT policy (same tokenizer)"
        )


def append_eos(ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, eos: int):
    """(B, T+1) ids and mask with ``eos`` written right after the last real token of ``rows`` (B,) bool
    (right-padded rows: the real tokens come first)."""
    lengths = mask.sum(-1)
    pad = torch.zeros_like(ids[:, :1])
    ids = torch.cat([ids, pad], dim=1)
    mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
    at = lengths.unsqueeze(1)
    ids = ids.scatter(1, at, torch.where(rows.unsqueeze(1), eos, ids.gather(1, at)))
    mask = mask.scatter(1, at, rows.unsqueeze(1) | mask.gather(1, at))
    return ids, mask


def policy_token_rewards(rm, prompts: list, response_ids: torch.Tensor, response_mask: torch.Tensor,
                         finished: torch.Tensor, *, score_unfinished: str = "append_eos",
                         missing_eos_penalty: float | None = None, eos_token_id: int | None = None,
                         device=None) -> torch.Tensor:
    """RM token rewards (B, T) float for right-padded policy responses ``response_ids`` (B, T) (``response_mask``
    (B, T) bool, True at real tokens; ``finished`` (B,) bool, True where the row ended with EOS), with cut rows
    scored as ``score_unfinished`` says and penalised by ``missing_eos_penalty`` (module docstring). ``eos_token_id``:
    the EOS appended to cut rows (default: the RM tokenizer's). The result is on ``device`` (default: where the
    RM returned it), zero at padding."""
    if score_unfinished not in SCORE_UNFINISHED:
        raise ConfigError(f"score_unfinished must be one of {', '.join(SCORE_UNFINISHED)}, not {score_unfinished!r}")
    response_mask = response_mask.bool()
    ids, mask, t = response_ids, response_mask, response_ids.shape[1]
    unfinished = ~finished.bool().to(mask.device)
    lengths = mask.sum(-1)
    if score_unfinished == "append_eos" and unfinished.any():
        eos = rm.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        ids, mask = append_eos(ids, mask, unfinished, eos)
    # a copy: the reward models score under inference_mode, and inference tensors refuse the
    # in-place edits below
    r = rm.token_rewards(prompts, ids, mask).rewards
    r = r.to(r.device if device is None else device).float().clone()
    rows = torch.arange(len(r), device=r.device)
    last = (lengths - 1).clamp(min=0).to(r.device)
    if r.shape[1] > t:  # the appended EOS is no action of the policy: its reward goes to the last real token
        extra = torch.where(unfinished.to(r.device), r[rows, lengths.clamp(max=t).to(r.device)], 0.0)
        r = r[:, :t].clone()  # contiguous, and the slice would share storage
        r[rows, last] += extra
    if missing_eos_penalty:
        r[rows, last] -= missing_eos_penalty * unfinished.to(r.device).float()
    return torch.where(response_mask.to(r.device), r, 0.0)
