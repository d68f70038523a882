"""PPO maths as small pure tensor functions.

Conventions (the token-level MDP of the method): the state is ``s_t = (x, y_<t)``, the
action is the response token ``y_t`` and the per-token reward is
``R_t = r_t - beta * kl_t`` where ``r_t`` comes from a reward model as a (B, T) tensor
(zeros except the last token for a scalar RM, dense for the seq2seq RM).

Every per-token tensor is (B, T) over RESPONSE tokens only, with a bool ``mask`` (B, T)
that is True at real response tokens. Masks are usually right-padded (valid tokens
contiguous from position 0); functions assume no more than that unless their docstring
says otherwise (``gae`` handles any mask). Outputs are exactly 0 at padding, and values
at padding positions of the inputs (which may be garbage, even NaN) never reach valid
outputs or gradients: inputs are sanitised with ``torch.where`` rather than multiplied
by the mask, because ``NaN * 0 = NaN``.

Style and formulas follow verl ``verl/trainer/ppo/core_algos.py`` and OpenRLHF
``openrlhf/models/loss.py`` / ``openrlhf/models/utils.py``; each function cites its source.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "kl_estimate",
    "shape_rewards",
    "gae",
    "policy_loss",
    "value_loss",
    "entropy_from_logits",
    "logprobs_from_logits",
    "FixedKLController",
    "AdaptiveKLController",
    "RunningMoments",
    "KL_ESTIMATORS",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0  # |log pi - log ref| per token, before any KL estimator (verl: k3 only)
K3_CLAMP = 10.0  # the k3 estimate per token (verl's low_var_kl)


def _check_shapes(mask: Tensor, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(mask.shape)} like mask")


def _zero_pad(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with padding replaced by 0 (``where``, not ``x * mask``: garbage/NaN must not leak)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------------------
# Masked reductions
# --------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x`` over entries where ``mask`` is True.

    Args:
        x: (B, T) values (anything at padding, NaN included).
        mask: (B, T) bool, True at valid entries.
        dim: reduce over this dim (or dims); None reduces everything to a scalar.
    Returns:
        () if ``dim`` is None, else ``x`` reduced over ``dim``, e.g. (B,) for ``dim=-1``.

    Source: verl ``verl_F.masked_sum`` (verl/utils/torch_functional.py).
    """
    mask = mask.bool()
    x = _zero_pad(x, mask)
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is True; 0 where there is no valid entry.

    Args:
        x: (B, T) values.
        mask: (B, T) bool.
        dim: as in ``masked_sum``.
    Returns:
        () if ``dim`` is None, else (B,) for ``dim=-1`` etc. A row (or whole batch) with an
        all-False mask gives 0 instead of 0/0 = NaN.

    Source: verl ``verl_F.masked_mean``; OpenRLHF ``masked_mean`` (openrlhf/models/utils.py).
    """
    mask = mask.bool()
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    # clamp(min=1): where count is 0 the sum is 0 too, so the result is 0, not NaN. The division
    # is done in at least float32: a bf16 count is already inexact above 256 tokens.
    acc = torch.promote_types(total.dtype, torch.float32)
    return (total.to(acc) / count.clamp(min=1).to(acc)).to(total.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all masked entries (a scalar).

    Args:
        x: (B, T) values.
        mask: (B, T) bool.
        unbiased: apply Bessel's correction n / (n - 1) (n = number of valid entries).
    Returns:
        () variance; 0 with fewer than 2 valid entries (there is no spread to measure, and
        0 is safer than NaN inside a training step).

    Source: verl ``verl_F.masked_var`` (which raises on n <= 1 instead).
    """
    mask = mask.bool()
    x = _zero_pad(x, mask)  # garbage at padding would otherwise put NaN into the gradient of the mean
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = int(mask.sum())
        if n < 2:
            return torch.zeros_like(var)
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, all_reduce=None) -> Tensor:
    """Normalise ``x`` to mean 0, std 1 over its masked entries (used for advantages).

    Args:
        x: (B, T) values.
        mask: (B, T) bool.
        shift_mean: if False the mean is added back (only the scale changes): whitening
            rewards should not change their sign/offset, whitening advantages should.
        eps: added to the variance before the square root.
        all_reduce: with several processes, a function summing a tensor over all of them
            (e.g. ``lambda t: accelerator.reduce(t, "sum")``): mean and variance are then those
            of every process's valid entries together, so all ranks whiten alike.
    Returns:
        (B, T) whitened values; exactly 0 at padding.

    Source: verl ``verl_F.masked_whiten``; trl ``core.whiten``.
    """
    mask = mask.bool()
    _check_shapes(mask, x=x)
    x = _zero_pad(x, mask)
    if all_reduce is None:
        mean = masked_mean(x, mask)
        var = masked_var(x, mask, unbiased=True)
    else:
        acc = torch.promote_types(x.dtype, torch.float32)
        n_local = mask.sum().to(acc)
        total = all_reduce(torch.stack([x.sum().to(acc), n_local]))
        n = total[1]
        mean = (total[0] / n.clamp(min=1)).to(x.dtype)
        m2 = all_reduce(_zero_pad((x - mean).to(acc).square(), mask).sum().reshape(1))[0]
        var = (m2 / (n - 1).clamp(min=1)).to(x.dtype) if float(n) >= 2 else torch.zeros((), dtype=x.dtype)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_pad(whitened, mask)


# --------------------------------------------------------------------------------------
# KL penalty and reward shaping
# --------------------------------------------------------------------------------------


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi.

    With ``log_r = ref_logp - logp`` (so ``r = ref(y) / pi(y)``, ``E_pi[r] = 1``):

    * ``k1 = -log_r = logp - ref_logp``: unbiased, but single samples can be negative and
      its variance is high.
    * ``k2 = 0.5 * log_r**2``: non-negative, low variance, biased (exact only to 2nd order).
    * ``k3 = (r - 1) - log_r``: unbiased, because ``E_pi[r - 1] = 0`` is a control variate
      added to k1; and non-negative, because ``exp(u) >= 1 + u`` for every real u (convexity
      of exp), so every single sample is >= 0.

    Args:
        logp: (B, T) log pi(y_t | s_t) of the sampled tokens.
        ref_logp: (B, T) log ref(y_t | s_t) of the same tokens.
        estimator: "k1" | "k2" | "k3".
    Returns:
        (B, T) per-token estimates (padding is not masked here; ``shape_rewards`` does it),
        with the log-ratio clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` and k3 to at most
        ``K3_CLAMP``.
    Raises:
        ValueError: unknown estimator.

    Source: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html;
    verl ``kl_penalty`` ("kl", "mse", "low_var_kl").
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}: one of {', '.join(KL_ESTIMATORS)}")
    # One extreme token (a log-prob of -inf under one policy, or far in the tail) must not put
    # inf into the rewards and stop the run: the log-ratio is clamped to [-20, 20] (verl clamps
    # k3's the same way; here every estimator gets it), and k3 itself to at most 10 (as verl).
    log_ratio = (logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # = -log_r
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    # k3 = exp(log_r) - 1 - log_r, with expm1 for accuracy when log_r is small (the usual case:
    # exp(u) - 1 cancels catastrophically). The lower clamp only removes rounding noise: the
    # exact value is >= 0, but a 1-ulp error in expm1 could make a tiny sample a tiny negative.
    log_r = -log_ratio
    return (torch.expm1(log_r) - log_r).clamp(0.0, K3_CLAMP)


@torch.no_grad()
def shape_rewards(
    token_rewards: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
    reward_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token rewards ``R_t = clip(r_t) - kl_coef * kl_t`` of the token-level MDP.

    The KL penalty is part of the reward (Ziegler et al. 2019; Ouyang et al. 2022), so it
    is a constant of the PPO objective: computed under ``no_grad``.

    Args:
        token_rewards: (B, T) RM rewards r_t (scalar RM: only the last valid token nonzero;
            seq2seq RM: dense).
        logp: (B, T) rollout-policy log-probs of the response tokens.
        ref_logp: (B, T) reference-policy log-probs of the same tokens.
        mask: (B, T) bool.
        kl_coef: beta (a float, e.g. ``controller.value``).
        estimator: KL estimator, see ``kl_estimate``.
        reward_clip: if set, r_t is clipped to [-c, c] BEFORE the KL term is subtracted
            (the clip bounds the RM's scale; it must not hide a large KL).
    Returns:
        (shaped, kl): both (B, T), exactly 0 at padding.

    Source: Ziegler et al. 2019 "Fine-Tuning Language Models from Human Preferences", eq. (2);
    verl ``apply_kl_penalty``; OpenRLHF ``compute_reward``.
    """
    mask = mask.bool()
    _check_shapes(mask, token_rewards=token_rewards, logp=logp, ref_logp=ref_logp)
    kl = _zero_pad(kl_estimate(_zero_pad(logp, mask), _zero_pad(ref_logp, mask), estimator), mask)
    r = _zero_pad(token_rewards, mask)
    if reward_clip is not None:
        if reward_clip <= 0:
            raise ValueError(f"reward_clip must be positive, not {reward_clip}")
        r = r.clamp(-reward_clip, reward_clip)
    shaped = _zero_pad(r - kl_coef * kl.to(r.dtype), mask)
    return shaped, kl


# --------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over response tokens.

    ``delta_t = R_t + gamma * V_{t+1} - V_t``;  ``A_t = delta_t + gamma * lam * A_{t+1}``.

    The value after the last valid token is 0: the episode ends with the response (the EOS
    or the length limit), and a terminal state has no future reward. This matters with
    gamma = 1, the usual RLHF setting: there is no discount to shrink a wrong bootstrap, so
    V at padding or a following prompt must not be used. With gamma = lam = 1, A_t is the
    reward-to-go minus V_t.

    A reverse loop over T (O(T) steps, each vectorised over the batch). Padding is skipped:
    at a masked position the carried (next value, next advantage) pass through unchanged,
    so results are right for right padding and also for left padding or holes, and
    rewards/values at padding never leak in. Computed under ``no_grad`` (advantages and
    returns are constants of the PPO loss).

    Args:
        rewards: (B, T) shaped per-token rewards R_t.
        values: (B, T) V(s_t) from the rollout-time critic.
        mask: (B, T) bool.
        gamma: discount.
        lam: GAE lambda (bias/variance trade-off: 0 = one-step TD, 1 = Monte Carlo).
    Returns:
        (advantages, returns): both (B, T), ``returns = advantages + values`` at valid
        tokens, exactly 0 at padding. Computed in at least float32.

    Source: Schulman et al. 2016 "High-Dimensional Continuous Control Using Generalized
    Advantage Estimation", eq. (16); verl ``compute_gae_advantage_return``.
    """
    mask = mask.bool()
    _check_shapes(mask, rewards=rewards, values=values)
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    r = _zero_pad(rewards.to(dtype), mask)
    v = _zero_pad(values.to(dtype), mask)
    B, T = mask.shape
    next_value = torch.zeros(B, dtype=dtype, device=r.device)  # V after the last token: 0
    next_adv = torch.zeros(B, dtype=dtype, device=r.device)
    advantages = torch.zeros(B, T, dtype=dtype, device=r.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, a, 0.0)
        next_adv = torch.where(m, a, next_adv)
        next_value = torch.where(m, v[:, t], next_value)
    returns = _zero_pad(advantages + v, mask)
    return advantages, returns


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def _token_mean(x: Tensor, mask: Tensor, token_count) -> Tensor:
    """``masked_mean`` of ``x``, or its masked sum divided by ``token_count`` when given.

    A minibatch split into micro-batches (gradient accumulation) or over processes must weigh
    every token alike: each part then divides its sum by the token count of the WHOLE
    minibatch, so the summed gradients equal those of one pass over it, however it is cut.
    """
    if token_count is None:
        return masked_mean(x, mask)
    return masked_sum(x, mask) / token_count


def policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2, token_count=None
) -> tuple[Tensor, dict]:
    """PPO clipped surrogate loss, averaged over valid tokens.

    ``loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))`` with
    ``ratio = exp(logp - old_logp)``. The max of the two losses (min of the objectives) is
    pessimistic: once the ratio has moved past the clip range in the direction that the
    advantage rewards, the clipped branch is taken and that token gives no gradient.

    Args:
        logp: (B, T) log-probs under the current policy (with grad).
        old_logp: (B, T) log-probs under the rollout policy.
        advantages: (B, T) advantages (usually whitened).
        mask: (B, T) bool.
        clip: epsilon of the clip range [1 - eps, 1 + eps].
        token_count: divide the summed loss by this many tokens instead of this batch's own
            count (the valid tokens of the whole minibatch; see ``_token_mean``).
    Returns:
        (loss, stats): loss () with grad; stats of python floats (over this batch):
        ``clipfrac`` share of valid tokens where the clipped branch is strictly larger
        (i.e. taken, giving no gradient); ``approx_kl`` the masked mean of the k3 estimate
        ``(ratio - 1) - log(ratio)`` of KL(pi_old || pi) (unbiased and >= 0 because the
        tokens were sampled from pi_old); ``ratio_mean`` masked mean ratio.

    Source: Schulman et al. 2017 "Proximal Policy Optimization Algorithms", eq. (7);
    verl ``compute_policy_loss``; OpenRLHF ``PolicyLoss``.
    """
    mask = mask.bool()
    _check_shapes(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    # Mask the log-ratio BEFORE exp: exp of garbage at padding could be inf, and inf * 0 in
    # the backward pass would put NaN into the gradient even though the forward is masked.
    log_ratio = _zero_pad(logp - old_logp, mask)
    ratio = torch.exp(log_ratio)
    adv = _zero_pad(advantages, mask).to(ratio.dtype)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = _token_mean(torch.maximum(pg_unclipped, pg_clipped), mask, token_count)
    with torch.no_grad():
        stats = {
            "clipfrac": float(masked_mean((pg_clipped > pg_unclipped).float(), mask)),
            "approx_kl": float(masked_mean(kl_estimate(old_logp.detach(), logp.detach(), "k3"), mask)),
            "ratio_mean": float(masked_mean(ratio.detach(), mask)),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 5.0, token_count=None
) -> tuple[Tensor, dict]:
    """Clipped value loss, averaged over valid tokens.

    ``0.5 * masked_mean(max((v - R)^2, (old_v + clip(v - old_v, -c, c) - R)^2))``: as in the
    policy loss, the max is pessimistic, so the critic gets no gradient for moving further
    than ``c`` from its rollout-time prediction in a direction that would lower the loss.

    Args:
        values: (B, T) current critic predictions (with grad).
        old_values: (B, T) critic predictions at rollout time.
        returns: (B, T) GAE returns (targets).
        mask: (B, T) bool.
        clip: absolute clip range c (in reward units); None disables clipping (plain
            0.5 * MSE).
        token_count: as in ``policy_loss``.
    Returns:
        (loss, stats): loss () with grad; stats of python floats: ``clipfrac`` share of valid
        tokens where the clipped loss is strictly larger (taken), ``value_mean`` masked mean
        of ``values``.

    Source: verl ``compute_value_loss``; OpenRLHF ``ValueLoss``; OpenAI baselines ppo2.
    """
    mask = mask.bool()
    _check_shapes(mask, values=values, old_values=old_values, returns=returns)
    v = _zero_pad(values, mask)  # sanitise so garbage at padding cannot give NaN gradients
    target = _zero_pad(returns, mask).to(v.dtype)
    loss_unclipped = (v - target).square()
    if clip is None:
        loss = 0.5 * _token_mean(loss_unclipped, mask, token_count)
        clipfrac = 0.0
    else:
        old_v = _zero_pad(old_values, mask).to(v.dtype)
        v_clipped = old_v + torch.clamp(v - old_v, -clip, clip)
        loss_clipped = (v_clipped - target).square()
        loss = 0.5 * _token_mean(torch.maximum(loss_unclipped, loss_clipped), mask, token_count)
        clipfrac = float(masked_mean((loss_clipped > loss_unclipped).float(), mask))
    stats = {"clipfrac": clipfrac, "value_mean": float(masked_mean(v.detach(), mask))}
    return loss, stats


# --------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# --------------------------------------------------------------------------------------

_FULL_PRECISION = (torch.float32, torch.float64)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of ``tokens`` under ``logits``: ``logit[token] - logsumexp(logits)``.

    Memory-aware: no (B, T, V) log-softmax is materialised, only a gather and a logsumexp.
    Half/bfloat16 logits are processed one row at a time in float32 (a bf16 logsumexp
    rounds log-probs to ~2-3 digits, too coarse for PPO ratios); without autograd only one
    (T, V) float32 row lives at a time, with autograd each row is kept for the backward.

    Args:
        logits: (B, T, V) where ``logits[b, t]`` is the distribution of ``tokens[b, t]``.
        tokens: (B, T) token ids (any value at padding that is a valid id).
    Returns:
        (B, T) log p(token); float32 for half/bfloat16 logits, else the logits' dtype.

    Source: OpenRLHF ``log_probs_from_logits`` (openrlhf/models/utils.py); verl
    ``logprobs_from_logits_v2``.
    """
    tokens = tokens.long()
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    if logits.dtype in _FULL_PRECISION:
        picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row = row_logits.float()  # (T, V)
        picked = torch.gather(row, -1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def _entropy_full_precision(logits: Tensor) -> Tensor:
    # H = -sum p log p = -sum p (logit - lse) = lse - sum p * logit. The clamp turns -inf
    # logits (banned tokens) into a large finite number so 0 * logit is 0, not NaN.
    lse = torch.logsumexp(logits, dim=-1)
    p = torch.softmax(logits, dim=-1)
    return lse - (p * logits.clamp_min(torch.finfo(logits.dtype).min)).sum(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution given by ``logits``, per position.

    Numerically stable: uses logsumexp, never log(softmax), so large logits neither
    overflow nor produce log(0). Half/bfloat16 logits are processed a row at a time in
    float32, as in ``logprobs_from_logits``.

    Args:
        logits: (B, T, V).
    Returns:
        (B, T) entropies in nats; float32 for half/bfloat16 logits.

    Source: verl ``entropy_from_logits`` (verl/utils/torch_functional.py).
    """
    if logits.dtype in _FULL_PRECISION:
        return _entropy_full_precision(logits)
    return torch.stack([_entropy_full_precision(row.float()) for row in logits])


# --------------------------------------------------------------------------------------
# KL coefficient controllers
# --------------------------------------------------------------------------------------


class FixedKLController:
    """Constant KL coefficient beta.

    Source: Ziegler et al. 2019; trl/verl ``FixedKLController``.
    """

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (same interface as ``AdaptiveKLController``)."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient: a proportional controller steering the KL to ``target``.

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``; ``beta *= 1 + e * n_steps / horizon``.
    Above target the coefficient grows (more penalty), below it shrinks; the clip keeps a
    single noisy KL measurement from moving beta by more than 20% per horizon.

    Source: Ziegler et al. 2019 "Fine-Tuning Language Models from Human Preferences", sec. 2.2;
    verl/trl ``AdaptiveKLController``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Update beta after ``n_steps`` samples (episodes) with mean sequence KL ``current_kl``."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


# --------------------------------------------------------------------------------------
# Running reward statistics
# --------------------------------------------------------------------------------------


class RunningMoments:
    """Running mean and (unbiased) std of every element seen, for reward normalisation.

    Batches are merged with the parallel algorithm of Chan, Golub and LeVeque (1979):
    with ``delta = batch_mean - mean`` and ``n = count + batch_count``,
    ``mean += delta * batch_count / n`` and ``M2 += batch_M2 + delta^2 * count * batch_count / n``.
    This is exact (not an exponential average) and stable (no sum of squares minus square
    of sums). Statistics are kept as python floats (float64).

    Attributes:
        mean: running mean (0.0 before any update).
        std: running unbiased std (1.0 while fewer than 2 elements were seen, so
            normalising by it is a no-op then).
        count: number of elements seen.

    Source: Chan et al. 1979 "Updating Formulae and a Pairwise Algorithm for Computing Sample
    Variances"; trl ``RunningMoments``; OpenAI baselines ``RunningMeanStd``.
    """

    def __init__(self):
        self.mean = 0.0
        self.m2 = 0.0
        self.count = 0

    @property
    def var(self) -> float:
        """Unbiased running variance (1.0 with fewer than 2 elements)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: Tensor, mask: Tensor | None = None) -> tuple[float, float]:
        """Add the elements of ``x`` (any shape; only where ``mask`` is True if given).

        Returns:
            (batch_mean, batch_std) of this batch alone (std unbiased; 0.0 for one element).
        Raises:
            ValueError: no elements.
        """
        x = x.detach()
        if mask is not None:
            x = x[mask.bool()]
        x = x.reshape(-1).double()
        batch_count = x.numel()
        if batch_count == 0:
            raise ValueError("RunningMoments.update got no elements")
        batch_mean = float(x.mean())
        batch_m2 = float((x - batch_mean).square().sum())
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * batch_count / total
        self.m2 += batch_m2 + delta * delta * self.count * batch_count / total
        self.count = total
        batch_std = math.sqrt(batch_m2 / (batch_count - 1)) if batch_count > 1 else 0.0
        return batch_mean, batch_std

    def state_dict(self) -> dict:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])
        self.count = int(state["count"])
