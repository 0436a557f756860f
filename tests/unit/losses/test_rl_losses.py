"""PPO / GRPO objectives against hand-computed values, and gradchecks in double precision."""

import math

import pytest
import torch

from tunery.losses import LOSSES
from tunery.losses.rl import (
    AdaptiveKLController,
    RunningMoments,
    gae,
    group_advantages,
    grpo_loss,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)


def test_kl_estimators_match_their_formulas():
    logps, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_penalty(logps, ref, "k1"), torch.tensor([0.5, -1.0]))
    r = ref - logps  # [-0.5, 1.0]
    expected = torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    assert torch.allclose(kl_penalty(logps, ref, "k3"), expected)
    assert (kl_penalty(logps, ref, "k3") >= 0).all() and r.numel() == 2
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(logps, ref, "k2")


def test_gae_by_hand():
    # one sequence of 3 tokens + one padded position; gamma=1, lambda=0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.25, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 + 0 - 0.5  # last token: no next value
    d1 = 0.0 + 0.5 - 0.25
    d0 = 0.0 + 0.25 - 0.5
    a2, a1 = d2, d1 + 0.5 * d2
    a0 = d0 + 0.5 * a1
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.25, a2 + 0.5, 0.0]]))


def test_gae_with_gamma_discounts_and_rows_are_independent():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    values = torch.zeros(2, 2)
    advantages, _ = gae(rewards, values, torch.ones(2, 2), gamma=0.5, lam=1.0)
    assert torch.allclose(advantages, torch.tensor([[1.5, 1.0], [1.0, 2.0]]))


def test_whiten_masked():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    out = whiten(values, mask, eps=0.0)  # mean 2, unbiased variance 1
    assert torch.allclose(out, torch.tensor([-1.0, 0.0, 1.0, 0.0]))
    kept = whiten(values, mask, shift_mean=False, eps=0.0)
    assert torch.allclose(kept, torch.tensor([1.0, 2.0, 3.0, 0.0]))
    assert masked_mean(values, mask) == 2.0


def test_ppo_policy_loss_clips_by_hand():
    old = torch.zeros(3)
    logps = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    advantages = torch.tensor([1.0, -2.0, 1.0])
    result = ppo_policy_loss(logps, old, advantages, clip_range=0.2)
    # token 0: ratio 1.5, A>0 -> clipped at 1.2; token 1: ratio .5, A<0 -> clipped at .8; token 2: inside
    assert torch.allclose(result.losses, torch.tensor([-1.2, 1.6, -1.1]))
    assert result.clipped.tolist() == [1.0, 1.0, 0.0]


def test_ppo_policy_loss_with_old_equal_new_is_the_policy_gradient():
    logps = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    advantages = torch.tensor([0.3, -1.0, 2.0])
    ppo_policy_loss(logps, logps.detach(), advantages).losses.sum().backward()
    plain = logps.detach().clone().requires_grad_(True)
    (-(advantages * plain)).sum().backward()
    assert torch.allclose(logps.grad, plain.grad)


def test_ppo_value_loss_by_hand():
    values = torch.tensor([1.0, 0.0])
    old = torch.tensor([0.0, 0.0])
    returns = torch.tensor([0.0, 1.0])
    result = ppo_value_loss(values, old, returns, clip_range=0.2)
    # token 0: plain (1-0)^2=1, clipped (0.2-0)^2=.04 -> max 1; token 1: both (0-1)^2=1
    assert torch.allclose(result.losses, torch.tensor([0.5, 0.5]))
    values = torch.tensor([1.0])
    result = ppo_value_loss(values, torch.zeros(1), torch.tensor([2.0]), clip_range=0.2)
    assert torch.allclose(result.losses, torch.tensor([0.5 * 1.8**2]))  # clipped value 0.2 is further
    assert result.clipped.tolist() == [1.0]


def test_group_advantages_normalise_within_groups_and_zero_for_ties():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    advantages = group_advantages(rewards, group_size=4, eps=0.0)
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()
    assert torch.allclose(advantages[:4], (torch.tensor([1.0, 0.0, 1.0, 0.0]) - 0.5) / std)
    assert advantages[4:].tolist() == [0.0, 0.0, 0.0, 0.0]


def grpo_inputs():
    logps = torch.tensor([-1.0, -1.0, -2.0], dtype=torch.float64)
    ref = torch.tensor([-1.0, -2.0, -2.0], dtype=torch.float64)
    advantages = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    sequence_ids = torch.tensor([0, 0, 1])
    lengths = torch.tensor([2, 1])
    return logps, ref, advantages, sequence_ids, lengths


def test_grpo_loss_per_sequence_by_hand():
    logps, ref, advantages, ids, lengths = grpo_inputs()
    result = grpo_loss(logps, logps.detach(), ref, advantages, ids, lengths, beta=0.1, epsilon=0.2)
    k3_second = math.exp(-1.0) + 1.0 - 1  # token 1: ref - logp = -1
    # ratio 1 everywhere: per-token -A, plus beta * k3
    expected = torch.tensor([(-1 - 1 + 0.1 * k3_second) / 2, 1.0], dtype=torch.float64)
    assert torch.allclose(result.losses, expected)
    dr = grpo_loss(logps, logps.detach(), ref, advantages, ids, lengths, beta=0.1, epsilon=0.2,
                   loss_type="dr_grpo", max_length=4)
    assert torch.allclose(dr.losses, torch.tensor([(-2 + 0.1 * k3_second) / 4, 1.0 / 4], dtype=torch.float64))
    no_ref = grpo_loss(logps, logps.detach(), None, advantages, ids, lengths, beta=0.0, epsilon=0.2)
    assert torch.allclose(no_ref.losses, torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert LOSSES.get("grpo") is grpo_loss and LOSSES.get("ppo") is ppo_policy_loss


def test_grpo_loss_rejects_unknown_type():
    logps, ref, advantages, ids, lengths = grpo_inputs()
    with pytest.raises(ValueError, match="dr_grpo"):
        grpo_loss(logps, logps, ref, advantages, ids, lengths, 0.1, 0.2, loss_type="bnpo")


def test_gradchecks_in_double_precision():
    _, ref, advantages, ids, lengths = grpo_inputs()
    old = torch.tensor([-1.1, -0.7, -2.05], dtype=torch.float64)  # ratios inside and outside the clip

    def grpo(x):
        return grpo_loss(x, old, ref, advantages, ids, lengths, beta=0.1, epsilon=0.2).losses

    def policy(x):
        return ppo_policy_loss(x, old, advantages, 0.2).losses

    def value(v):
        return ppo_value_loss(v, old, advantages, 0.2).losses

    def k3(x):
        return kl_penalty(x, ref, "k3")

    for fn in (grpo, policy, value, k3):
        point = torch.tensor([-1.0, -1.05, -1.9], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(fn, (point,))
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    point = torch.tensor([0.3, -0.4, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: whiten(x, mask), (point,))


def test_adaptive_kl_controller_moves_towards_target():
    controller = AdaptiveKLController(target=6.0)
    assert controller.value == 0.2  # TRL's init_kl_coef
    up = controller.update(current_kl=12.0, n_steps=100)  # error clipped at +0.2
    assert math.isclose(up, 0.2 * (1 + 0.2 * 100 / 10000))
    controller = AdaptiveKLController(target=6.0)
    down = controller.update(current_kl=5.4, n_steps=50)  # error -0.1
    assert math.isclose(down, 0.2 * (1 - 0.1 * 50 / 10000))


def test_running_moments_match_all_values_at_once():
    moments = RunningMoments()
    first, second = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0])
    moments.update(first)
    moments.update(second)
    everything = torch.cat([first, second]).double()
    assert math.isclose(moments.mean, float(everything.mean()), rel_tol=1e-9)
    assert math.isclose(moments.std, float(everything.std(unbiased=False)), rel_tol=1e-9)
