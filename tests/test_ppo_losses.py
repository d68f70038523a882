"""Behavioural tests of the PPO maths in ``seq2seq_rm.rl.losses`` against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_rm.rl.losses import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    entropy_from_logits,
    gae,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
    shape_rewards,
    value_loss,
)

NAN = float("nan")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def right_mask(lengths, width):
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=tol, rtol=tol)


# --------------------------------------------------------------------------------------
# Masked reductions
# --------------------------------------------------------------------------------------


def test_masked_reductions_ignore_padding_garbage():
    x = t([1.0, 2.0, NAN], [3.0, 1e30, 5.0])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    close(masked_sum(x, mask), 11.0)
    close(masked_mean(x, mask), 11.0 / 4)
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    close(masked_sum(x, mask, dim=0), [4.0, 2.0, 5.0])
    # entries 1, 2, 3, 5: mean 2.75, squared deviations sum 8.75 -> unbiased 8.75 / 3
    close(masked_var(x, mask), 8.75 / 3)
    close(masked_var(x, mask, unbiased=False), 8.75 / 4)


def test_masked_mean_all_false_is_zero():
    x = t([NAN, 2.0], [1.0, 2.0])
    mask = torch.tensor([[False, False], [True, False]])
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    close(masked_mean(x, mask, dim=-1), [0.0, 1.0])
    assert masked_var(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_whiten():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g) * 3 + 2
    mask = right_mask([7, 3, 5, 1], 7)
    x_garbage = torch.where(mask, x, torch.full_like(x, NAN))
    w = masked_whiten(x_garbage, mask)
    assert torch.all(w[~mask] == 0)
    close(w[mask].mean(), 0.0)
    close(w[mask].std(), 1.0, tol=1e-4)
    # shift_mean=False keeps the mean and only rescales
    w2 = masked_whiten(x, mask, shift_mean=False)
    close(w2[mask].mean(), x[mask].mean(), tol=1e-4)
    close(w2[mask].std(), 1.0, tol=1e-4)
    assert torch.all(w2[~mask] == 0)
    # gradients stay finite despite NaN garbage at padding
    xg = x_garbage.clone().requires_grad_(True)
    (masked_whiten(xg, mask) * torch.arange(7.0)).sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.all(xg.grad[~mask] == 0)


# --------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------


def test_gae_gamma1_lam1_is_reward_to_go_minus_value():
    r = t([1.0, 0.0, 2.0])
    v = t([0.5, 1.0, 1.5])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
    # reward-to-go = [3, 2, 2]; minus values -> [2.5, 1.0, 0.5]
    close(adv, [[2.5, 1.0, 0.5]])
    close(ret, [[3.0, 2.0, 2.0]])


def test_gae_by_hand_gamma09_lam05():
    r = t([1.0, 0.0, 2.0])
    v = t([0.5, 1.0, 1.5])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.5)
    # V after the last token is 0; gamma * lam = 0.45
    # delta_2 = 2 + 0.9*0   - 1.5 = 0.5
    # delta_1 = 0 + 0.9*1.5 - 1.0 = 0.35
    # delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4
    # A_2 = 0.5
    # A_1 = 0.35 + 0.45*0.5   = 0.575
    # A_0 = 1.4  + 0.45*0.575 = 1.65875
    # returns = A + V = [2.15875, 1.575, 2.0]
    close(adv, [[1.65875, 0.575, 0.5]])
    close(ret, [[2.15875, 1.575, 2.0]])


def test_gae_right_padded_batch_matches_rows_alone_and_ignores_garbage():
    g = torch.Generator().manual_seed(1)
    lengths = [3, 6, 1, 4]
    T = 6
    mask = right_mask(lengths, T)
    r = torch.randn(4, T, generator=g)
    v = torch.randn(4, T, generator=g)
    adv, ret = gae(r, v, mask, gamma=0.95, lam=0.9)
    for i, n in enumerate(lengths):
        a1, r1 = gae(r[i : i + 1, :n], v[i : i + 1, :n], torch.ones(1, n, dtype=torch.bool), gamma=0.95, lam=0.9)
        close(adv[i, :n], a1[0])
        close(ret[i, :n], r1[0])
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)

    # garbage (huge numbers and NaN) at padding changes nothing
    r_bad = torch.where(mask, r, torch.full_like(r, 1e6))
    v_bad = torch.where(mask, v, torch.full_like(v, NAN))
    adv2, ret2 = gae(r_bad, v_bad, mask, gamma=0.95, lam=0.9)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_gae_left_padding_skips_padding():
    r = t([1.0, 0.0, 2.0])
    v = t([0.5, 1.0, 1.5])
    adv, _ = gae(r, v, torch.ones(1, 3, dtype=torch.bool), gamma=0.9, lam=0.5)
    r_left = t([7.0, 1.0, 0.0, 2.0])
    v_left = t([NAN, 0.5, 1.0, 1.5])
    adv_left, ret_left = gae(r_left, v_left, torch.tensor([[False, True, True, True]]), gamma=0.9, lam=0.5)
    close(adv_left[:, 1:], adv)
    assert adv_left[0, 0] == 0 and ret_left[0, 0] == 0


# --------------------------------------------------------------------------------------
# KL estimators and reward shaping
# --------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp = t([-1.0, -2.0, -0.5])
    ref = t([-2.0, -1.0, -0.5])
    # log(pi/ref) = [1, -1, 0]
    close(kl_estimate(logp, ref, "k1"), [[1.0, -1.0, 0.0]])
    close(kl_estimate(logp, ref, "k2"), [[0.5, 0.5, 0.0]])
    # k3 = exp(ref - logp) - (ref - logp) - 1: exp(-1) + 1 - 1 = e^-1; exp(1) - 1 - 1 = e - 2; 0
    close(kl_estimate(logp, ref, "k3"), [[math.exp(-1), math.e - 2, 0.0]])
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-60, 0, width=32), st.floats(-60, 0, width=32)), min_size=1, max_size=16
    )
)
def test_k3_is_non_negative(pairs):
    logp = torch.tensor([[a for a, _ in pairs]])
    ref = torch.tensor([[b for _, b in pairs]])
    k3 = kl_estimate(logp, ref, "k3")
    assert torch.all(k3 >= 0)
    assert torch.all(torch.isfinite(k3))


def test_shape_rewards_scalar_style_reward():
    mask = right_mask([3, 2], 4)
    rm = t([0.0, 0.0, 1.0, 0.0], [0.0, -2.0, 0.0, 0.0])
    logp = t([-1.0, -1.0, -1.0, 5.0], [-0.5, -0.5, 9.0, 9.0])
    ref = t([-1.5, -0.5, -1.0, -9.0], [-1.0, -0.5, 0.0, 0.0])
    shaped, kl = shape_rewards(rm, logp, ref, mask, kl_coef=0.1, estimator="k1")
    # k1 = logp - ref: row 0 [0.5, -0.5, 0], row 1 [0.5, 0]; padding 0
    close(kl, [[0.5, -0.5, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    # R = r - 0.1 * kl: row 0 [-0.05, 0.05, 1.0], row 1 [-0.05, -2.0]
    close(shaped, [[-0.05, 0.05, 1.0, 0.0], [-0.05, -2.0, 0.0, 0.0]])
    assert torch.all(shaped[~mask] == 0) and torch.all(kl[~mask] == 0)


def test_shape_rewards_dense_reward_k3():
    mask = right_mask([3], 3)
    rm = t([0.5, -0.25, 1.0])
    logp = t([-1.0, -2.0, -0.5])
    ref = t([-2.0, -1.0, -0.5])
    shaped, kl = shape_rewards(rm, logp, ref, mask, kl_coef=0.5, estimator="k3")
    k3 = [math.exp(-1), math.e - 2, 0.0]
    close(kl, [k3])
    close(shaped, [[0.5 - 0.5 * k3[0], -0.25 - 0.5 * k3[1], 1.0]])


def test_shape_rewards_zero_coef_returns_token_rewards_and_clip():
    mask = right_mask([3, 1], 3)
    rm = t([0.3, -2.0, 4.0], [-0.7, 8.0, 8.0])
    logp = t([-1.0, -2.0, -3.0], [-1.0, NAN, NAN])
    ref = t([-3.0, -1.0, -0.5], [-2.0, NAN, NAN])
    shaped, _ = shape_rewards(rm, logp, ref, mask, kl_coef=0.0)
    close(shaped, [[0.3, -2.0, 4.0], [-0.7, 0.0, 0.0]])
    # clip to [-0.5, 0.5] BEFORE subtracting the KL term (k1 = [2, -1, -2.5], [1])
    shaped, _ = shape_rewards(rm, logp, ref, mask, kl_coef=0.1, reward_clip=0.5)
    close(shaped, [[0.3 - 0.2, -0.5 + 0.1, 0.5 + 0.25], [-0.5 - 0.1, 0.0, 0.0]])


# --------------------------------------------------------------------------------------
# Policy and value losses
# --------------------------------------------------------------------------------------


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    mask = right_mask([3, 2], 4)
    adv = t([1.0, -2.0, 0.5, 99.0], [3.0, 1.0, 99.0, 99.0])
    logp = t([-1.0, -2.0, -0.3, -1.0], [-0.1, -4.0, 0.0, 0.0]).requires_grad_(True)
    loss, stats = policy_loss(logp, logp.detach(), adv, mask)
    close(loss, -(1.0 - 2.0 + 0.5 + 3.0 + 1.0) / 5)
    assert stats["clipfrac"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["approx_kl"] == pytest.approx(0.0)
    assert all(isinstance(v, float) for v in stats.values())


def test_policy_loss_clipped_token_gets_no_gradient():
    old = t([-1.0, -1.0, -1.0, -1.0])
    # ratios [1.5, 1.0, 0.5, garbage]; clip 0.2 -> range [0.8, 1.2]
    logp = (old + torch.log(t([1.5, 1.0, 0.5, 1e30]))).requires_grad_(True)
    adv = t([1.0, 2.0, 1.0, NAN])
    mask = right_mask([3], 4)
    loss, stats = policy_loss(logp, old, adv, mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped, A > 0 and ratio above 1 + c)
    # token 1: -2 (ratio 1)
    # token 2: max(-0.5, -0.8) = -0.5 (unclipped: pessimistic branch)
    close(loss, (-1.2 - 2.0 - 0.5) / 3)
    loss.backward()
    # d/dlogp of -A * ratio = -A * ratio, divided by 3 tokens
    close(logp.grad, [[0.0, -2.0 / 3, -0.5 / 3, 0.0]])
    assert stats["clipfrac"] == pytest.approx(1 / 3)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    # k3 of KL(old || new): mean of (r - 1 - log r) over [1.5, 1, 0.5]
    expected_kl = ((0.5 - math.log(1.5)) + 0.0 + (-0.5 - math.log(0.5))) / 3
    assert stats["approx_kl"] == pytest.approx(expected_kl, rel=1e-5)


def test_value_loss_clipping_by_hand():
    values = t([1.0, 3.0, 0.0, NAN]).requires_grad_(True)
    old = t([0.0, 0.0, 0.0, NAN])
    returns = t([1.0, 1.0, 5.0, 1e30])
    mask = right_mask([3], 4)
    loss, stats = value_loss(values, old, returns, mask, clip=0.5)
    # token 0: unclipped (1-1)^2 = 0;  clipped v = 0 + clip(1, -.5, .5) = 0.5 -> (0.5-1)^2 = 0.25 -> max 0.25
    # token 1: unclipped (3-1)^2 = 4;  clipped v = 0.5 -> 0.25                            -> max 4
    # token 2: unclipped (0-5)^2 = 25; clipped v = 0   -> 25                              -> max 25
    # loss = 0.5 * (0.25 + 4 + 25) / 3 = 4.875; the clipped branch is strictly larger only at token 0
    close(loss, 4.875)
    assert stats["clipfrac"] == pytest.approx(1 / 3)
    assert stats["value_mean"] == pytest.approx(4 / 3)
    loss.backward()
    # token 0 took the clipped branch at the clip bound -> no gradient; token 1: (v-R)/3 = 2/3; token 2: -5/3
    close(values.grad, [[0.0, 2.0 / 3, -5.0 / 3, 0.0]])


def test_value_loss_without_clip_is_half_mse():
    g = torch.Generator().manual_seed(2)
    values, old, returns = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = right_mask([5, 2, 4], 5)
    loss, stats = value_loss(values, old, returns, mask, clip=None)
    close(loss, 0.5 * ((values - returns)[mask] ** 2).mean())
    assert stats["clipfrac"] == 0.0


# --------------------------------------------------------------------------------------
# Log-probs and entropy
# --------------------------------------------------------------------------------------


def test_logprobs_from_logits_matches_log_softmax():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 11, generator=g) * 4
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    close(logprobs_from_logits(logits, tokens), expected)
    # bf16 logits: computed in float32 from the (exactly upcast) bf16 values
    lb = logits.bfloat16()
    out = logprobs_from_logits(lb, tokens)
    assert out.dtype == torch.float32
    close(out, torch.log_softmax(lb.float(), -1).gather(-1, tokens[..., None]).squeeze(-1))


def test_entropy_from_logits():
    assert torch.allclose(entropy_from_logits(torch.full((2, 3, 7), 5.0)), torch.full((2, 3), math.log(7)))
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 9, generator=g) * 30  # large logits: stable via logsumexp
    close(entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy(), tol=1e-4)
    # banned tokens (-inf logits) contribute 0, not NaN: uniform over the 2 allowed tokens
    banned = torch.tensor([[[0.0, 0.0, -math.inf, -math.inf]]])
    close(entropy_from_logits(banned), [[math.log(2)]])


# --------------------------------------------------------------------------------------
# KL controllers and running moments
# --------------------------------------------------------------------------------------


def test_adaptive_kl_controller_ziegler_formula():
    c = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    c.update(current_kl=9.0, n_steps=256)
    # error = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2; mult = 1 + 0.2 * 256 / 10000 = 1.00512
    assert c.value == pytest.approx(0.1 * 1.00512)
    before = c.value
    c.update(current_kl=5.4, n_steps=256)
    # error = 5.4/6 - 1 = -0.1; mult = 1 - 0.1 * 256 / 10000 = 0.99744
    assert c.value == pytest.approx(before * 0.99744)
    assert c.value < before

    d = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=5)
    d.load_state_dict(c.state_dict())
    assert d.state_dict() == c.state_dict()
    d.update(0.0, 10)
    c.update(0.0, 10)
    assert d.value == c.value


def test_fixed_kl_controller():
    c = FixedKLController(0.05)
    c.update(100.0, 512)
    assert c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05


def test_running_moments_match_concatenated_batches():
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(5, generator=g) * 2 + 1, torch.randn(1, generator=g), torch.randn(3, 4, generator=g) - 3]
    rm = RunningMoments()
    assert rm.mean == 0.0 and rm.std == 1.0
    for b in batches:
        bm, bs = rm.update(b)
        assert bm == pytest.approx(b.mean().item(), abs=1e-6)
        assert bs == pytest.approx(b.std().item() if b.numel() > 1 else 0.0, abs=1e-6)
    allx = torch.cat([b.reshape(-1) for b in batches]).double()
    assert rm.count == allx.numel()
    assert rm.mean == pytest.approx(allx.mean().item(), abs=1e-9)
    assert rm.std == pytest.approx(allx.std().item(), abs=1e-9)

    other = RunningMoments()
    other.load_state_dict(rm.state_dict())
    assert (other.mean, other.std, other.count) == (rm.mean, rm.std, rm.count)

    masked = RunningMoments()
    x = t([1.0, 2.0, NAN], [3.0, NAN, NAN])
    masked.update(x, mask=right_mask([2, 1], 3))
    assert masked.mean == pytest.approx(2.0) and masked.std == pytest.approx(1.0)
    with pytest.raises(ValueError):
        masked.update(torch.tensor([]))


def test_whitening_over_two_processes_equals_whitening_their_whole_batch():
    """Two 'processes' (threads) each whiten their half with an all_reduce that sums over both:
    the halves together equal whitening the whole batch at once."""
    import threading

    torch.manual_seed(0)
    x = torch.randn(6, 5) * 3 + 1
    mask = torch.rand(6, 5) > 0.3
    halves = [(x[:2], mask[:2]), (x[2:], mask[2:])]  # unequal shares, unequal token counts
    barrier, slots, out = threading.Barrier(2), {}, [None, None]

    def run(rank):
        calls = [0]

        def all_reduce(t):
            key = calls[0]
            calls[0] += 1
            slots[(key, rank)] = t.clone()
            barrier.wait()
            total = slots[(key, 0)] + slots[(key, 1)]
            barrier.wait()
            return total

        out[rank] = masked_whiten(*halves[rank], all_reduce=all_reduce)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.allclose(torch.cat(out), masked_whiten(x, mask), atol=1e-6)
    assert not torch.allclose(out[0], masked_whiten(*halves[0]), atol=1e-3)  # per-half whitening differs
