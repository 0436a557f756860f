"""Preference objectives against arithmetic written out by hand, edge cases, and gradcheck in float64.

The expected values use ``math`` on plain floats (log(1 + e^-x) for -log sigma(x), odds
ratios as p / (1 - p) ...) rather than the torch expressions the implementation uses.
"""

import math

import pytest
import torch
from torch.autograd import gradcheck

from tunery.errors import ConfigError
from tunery.labels import IGNORE_INDEX
from tunery.losses import LOSSES
from tunery.losses.preference import (
    dpo_loss,
    kto_loss,
    orpo_loss,
    pairwise_reward_loss,
    reward_accuracy,
    sequence_logps,
    simpo_loss,
)


def t(*values, grad=False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def neg_log_sigmoid(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def assert_close(tensor: torch.Tensor, expected: list[float]) -> None:
    assert tensor.shape == (len(expected),)
    for got, want in zip(tensor.tolist(), expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


# Two pairs: the first prefers chosen by a log-ratio margin h = +2, the second by h = -2.
POLICY_C, POLICY_R = t(-10.0, -20.0), t(-12.0, -18.0)
REF_C, REF_R = t(-11.0, -19.0), t(-11.0, -19.0)


# ---------------------------------------------------------------- DPO


def test_dpo_sigmoid_matches_hand_values_and_rewards():
    # h = (pc - pr) - (rc - rr): (-10 + 12) - 0 = 2 and (-20 + 18) - 0 = -2; beta h = +-0.2
    out = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1)
    assert_close(out.losses, [neg_log_sigmoid(0.2), neg_log_sigmoid(-0.2)])
    # rewards beta (policy - reference): chosen 0.1 * (-10 + 11), 0.1 * (-20 + 19);
    # rejected 0.1 * (-12 + 11), 0.1 * (-18 + 19)
    assert_close(out.chosen_rewards, [0.1, -0.1])
    assert_close(out.rejected_rewards, [-0.1, 0.1])


def test_dpo_reference_shifts_the_margin():
    # Same policy, a reference that already preferred chosen by 3 nats: h = 2 - 3 = -1.
    out = dpo_loss(t(-10.0), t(-12.0), t(-9.0), t(-12.0), beta=0.5)
    assert_close(out.losses, [neg_log_sigmoid(-0.5)])


def test_dpo_label_smoothing_is_conservative_dpo():
    eps = 0.2
    out = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, label_smoothing=eps)
    expected = [
        (1 - eps) * neg_log_sigmoid(0.2) + eps * neg_log_sigmoid(-0.2),
        (1 - eps) * neg_log_sigmoid(-0.2) + eps * neg_log_sigmoid(0.2),
    ]
    assert_close(out.losses, expected)


def test_dpo_label_smoothing_one_half_cannot_tell_chosen_from_rejected():
    out = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, label_smoothing=0.5)
    half = 0.5 * neg_log_sigmoid(0.2) + 0.5 * neg_log_sigmoid(-0.2)
    assert_close(out.losses, [half, half])


def test_dpo_beta_scales_the_margin():
    small = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1).losses.item()
    large = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=2.0).losses.item()
    assert small == pytest.approx(neg_log_sigmoid(0.2))
    assert large == pytest.approx(neg_log_sigmoid(4.0))


def test_dpo_hinge_is_zero_at_and_beyond_the_margin():
    # beta = 0.5, h = 2 (exactly at the margin beta h = 1), 1, -1, 3
    policy_c = t(-10.0, -10.0, -10.0, -10.0, grad=True)
    policy_r = t(-12.0, -11.0, -9.0, -13.0)
    zeros = t(0.0, 0.0, 0.0, 0.0)
    out = dpo_loss(policy_c, policy_r, zeros, zeros, beta=0.5, loss_type="hinge")
    assert_close(out.losses, [0.0, 1 - 0.5, 1 + 0.5, 0.0])
    (grad,) = torch.autograd.grad(out.losses.sum(), policy_c)
    assert_close(grad, [0.0, -0.5, -0.5, 0.0])  # d relu(1 - beta h) / d pc = -beta inside the margin


def test_dpo_hinge_and_ipo_ignore_label_smoothing():
    for loss_type in ("hinge", "ipo"):
        plain = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, 0.1, loss_type)
        smoothed = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, 0.1, loss_type, label_smoothing=0.3)
        assert torch.equal(plain.losses, smoothed.losses)


def test_dpo_ipo_regresses_the_margin_onto_its_target():
    # beta = 0.25: target 1 / (2 beta) = 2; h = 2, 0, 3 -> (0)^2, (-2)^2, (1)^2
    policy_c = t(-5.0, -5.0, -5.0, grad=True)
    policy_r = t(-7.0, -5.0, -8.0)
    zeros = t(0.0, 0.0, 0.0)
    out = dpo_loss(policy_c, policy_r, zeros, zeros, beta=0.25, loss_type="ipo")
    assert_close(out.losses, [0.0, 4.0, 1.0])
    (grad,) = torch.autograd.grad(out.losses.sum(), policy_c)
    assert_close(grad, [0.0, -4.0, 2.0])  # 2 (h - target): no push once the target is reached


def test_dpo_rejects_bad_settings():
    with pytest.raises(ConfigError, match="pref_loss 'kto_pair'"):
        dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, 0.1, loss_type="kto_pair")
    with pytest.raises(ConfigError, match="dpo_label_smoothing"):
        dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, 0.1, label_smoothing=0.7)
    with pytest.raises(ConfigError, match="pref_beta"):
        dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, 0.0, loss_type="ipo")


# ---------------------------------------------------------------- ORPO and SimPO


def test_orpo_odds_ratio_matches_hand_values():
    chosen, rejected = [-0.5, -2.0], [-1.5, -0.25]
    out = orpo_loss(t(*chosen), t(*rejected), beta=0.1)
    expected = []
    for c, r in zip(chosen, rejected, strict=True):
        p_c, p_r = math.exp(c), math.exp(r)
        log_odds_ratio = math.log((p_c / (1 - p_c)) / (p_r / (1 - p_r)))
        expected.append(neg_log_sigmoid(log_odds_ratio))
    assert_close(out.losses, expected)
    assert_close(out.chosen_rewards, [0.1 * -0.5, 0.1 * -2.0])
    assert_close(out.rejected_rewards, [0.1 * -1.5, 0.1 * -0.25])


def test_orpo_is_accurate_for_very_likely_and_very_unlikely_responses():
    # c -> 0: log(1 - e^c) ~ log(-c); r = -50: log(1 - e^r) ~ -e^-50, i.e. ~0
    c, r = -1e-12, -50.0
    out = orpo_loss(t(c), t(r), beta=1.0)
    log_odds_ratio = (c - r) - (math.log(-c) - 0.0)
    assert out.losses.item() == pytest.approx(neg_log_sigmoid(log_odds_ratio), rel=1e-9)


def test_orpo_stays_finite_when_a_response_has_probability_one():
    chosen = torch.tensor([0.0, -1.0], requires_grad=True)  # float32 rounding can give exactly 0
    out = orpo_loss(chosen, torch.tensor([-1.0, -0.0]), beta=0.1)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(chosen.grad).all()


def test_simpo_subtracts_the_gamma_margin():
    # beta = 2, gamma = 1: beta (c - r) - gamma = 2 * 0.5 - 1 = 0 -> log 2; second pair 2 * -1 - 1 = -3
    out = simpo_loss(t(-0.5, -2.0), t(-1.0, -1.0), beta=2.0, gamma=1.0)
    assert_close(out.losses, [math.log(2.0), neg_log_sigmoid(-3.0)])
    assert_close(out.chosen_rewards, [-1.0, -4.0])
    assert_close(out.rejected_rewards, [-2.0, -2.0])


def test_simpo_without_gamma_is_a_reference_free_bradley_terry_loss():
    out = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.0)
    assert_close(out.losses, [neg_log_sigmoid(1.0)])


def test_larger_simpo_gamma_demands_a_larger_margin():
    losses = [simpo_loss(t(-0.5), t(-1.0), 2.0, gamma).losses.item() for gamma in (0.0, 0.5, 1.0, 2.0)]
    assert losses == sorted(losses) and len(set(losses)) == 4


# ---------------------------------------------------------------- KTO


def test_kto_matches_hand_values_with_unequal_counts():
    beta, w_d, w_u = 0.5, 1.5, 0.7
    # desirable log-ratios 1, 0; undesirable -1; KL pairs' log-ratios 1, 0, 1 -> z0 = 2/3
    out = kto_loss(
        t(-3.0, -4.0), t(-6.0), t(-10.0, -12.0, -8.0),
        t(-4.0, -4.0), t(-5.0), t(-11.0, -12.0, -9.0),
        beta=beta, desirable_weight=w_d, undesirable_weight=w_u,
    )
    z0 = 2.0 / 3.0
    assert out.kl.item() == pytest.approx(z0)
    assert_close(out.losses, [
        w_d * (1 - sigmoid(beta * (1.0 - z0))),
        w_d * (1 - sigmoid(beta * (0.0 - z0))),
        w_u * (1 - sigmoid(beta * (z0 - -1.0))),
    ])
    assert_close(out.chosen_rewards, [0.5, 0.0])
    assert_close(out.rejected_rewards, [-0.5])


def test_kto_kl_estimate_is_clamped_at_zero():
    # KL pairs' log-ratios -1 and -3: a negative mean is clamped to z0 = 0
    out = kto_loss(t(-3.0), t(-6.0), t(-10.0, -12.0), t(-4.0), t(-5.0), t(-9.0, -9.0), beta=1.0)
    assert out.kl.item() == 0.0
    assert_close(out.losses, [1 - sigmoid(1.0), 1 - sigmoid(1.0)])


def test_kto_with_only_desirable_examples_and_no_kl_pairs():
    empty = t()
    out = kto_loss(t(-3.0, -2.0), empty, empty, t(-3.0, -4.0), empty, empty, beta=0.1)
    assert out.kl.item() == 0.0
    assert_close(out.losses, [1 - sigmoid(0.0), 1 - sigmoid(0.2)])
    assert out.rejected_rewards.shape == (0,)


def test_kto_kl_term_carries_no_gradient():
    policy_kl = t(-10.0, -8.0, grad=True)
    policy_c = t(-3.0, grad=True)
    out = kto_loss(policy_c, t(-6.0), policy_kl, t(-4.0), t(-5.0), t(-11.0, -11.0), beta=0.5)
    assert out.kl.item() == pytest.approx(2.0)
    assert not out.kl.requires_grad
    grad_c, grad_kl = torch.autograd.grad(out.losses.sum(), (policy_c, policy_kl), allow_unused=True)
    assert grad_kl is None
    s = sigmoid(0.5 * (1.0 - 2.0))
    assert grad_c.item() == pytest.approx(-0.5 * s * (1 - s))  # d(1 - sigma(beta x)) / dx


# ---------------------------------------------------------------- reward model


def test_pairwise_reward_loss_and_accuracy():
    chosen, rejected = [1.0, 0.0, -2.0], [0.0, 0.5, -2.0]
    losses = pairwise_reward_loss(t(*chosen), t(*rejected))
    assert_close(losses, [neg_log_sigmoid(c - r) for c, r in zip(chosen, rejected, strict=True)])
    assert losses[2].item() == pytest.approx(math.log(2.0))  # a tie costs log 2
    assert reward_accuracy(t(*chosen), t(*rejected)).item() == pytest.approx(1 / 3)  # ties count as wrong


# ---------------------------------------------------------------- rewards, registry


def test_rewards_are_detached():
    pc, pr = t(-10.0, -20.0, grad=True), t(-12.0, -18.0, grad=True)
    results = [
        dpo_loss(pc, pr, REF_C, REF_R, 0.1),
        dpo_loss(pc, pr, REF_C, REF_R, 0.1, "hinge"),
        dpo_loss(pc, pr, REF_C, REF_R, 0.1, "ipo"),
        orpo_loss(pc / 20, pr / 20, 0.1),
        simpo_loss(pc, pr, 0.1, 0.5),
        kto_loss(pc, pr, pc, REF_C, REF_R, REF_C, 0.1),
    ]
    for result in results:
        assert result.losses.requires_grad
        assert not result.chosen_rewards.requires_grad
        assert not result.rejected_rewards.requires_grad


def test_results_unpack_as_tuples():
    losses, chosen_rewards, rejected_rewards = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, 0.1)
    assert losses.shape == chosen_rewards.shape == rejected_rewards.shape == (2,)
    losses, chosen_rewards, rejected_rewards, kl = kto_loss(
        POLICY_C, POLICY_R, POLICY_C, REF_C, REF_R, REF_C, 0.1
    )
    assert kl.shape == ()


def test_losses_are_registered_by_name():
    assert LOSSES.get("dpo") is dpo_loss
    assert LOSSES.get("orpo") is orpo_loss
    assert LOSSES.get("simpo") is simpo_loss
    assert LOSSES.get("kto") is kto_loss
    assert LOSSES.get("pairwise_reward") is pairwise_reward_loss


# ---------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize(
    "loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.1), ("hinge", 0.0), ("ipo", 0.0)]
)
def test_dpo_gradcheck(loss_type, smoothing):
    # hinge margins beta h = 0.3 * (0.7, -1.9, 0.8) stay away from the kink at beta h = 1
    pc, pr = t(-10.0, -20.0, -5.0, grad=True), t(-11.2, -17.6, -8.3, grad=True)
    ref_c, ref_r = t(-10.5, -19.0, -5.5), t(-11.0, -18.5, -8.0)

    def fn(pc, pr):
        return dpo_loss(pc, pr, ref_c, ref_r, 0.3, loss_type, smoothing).losses

    assert gradcheck(fn, (pc, pr))


def test_orpo_and_simpo_gradcheck():
    c, r = t(-0.3, -1.7, -0.01, grad=True), t(-0.9, -0.8, -3.0, grad=True)
    assert gradcheck(lambda c, r: orpo_loss(c, r, 0.2).losses, (c, r))
    assert gradcheck(lambda c, r: simpo_loss(c, r, 2.5, 1.4).losses, (c, r))


def test_kto_gradcheck():
    pc, pr = t(-3.0, -4.5, grad=True), t(-6.0, -2.0, -7.5, grad=True)
    ref_c, ref_r = t(-4.0, -4.0), t(-5.0, -2.5, -7.0)
    policy_kl, ref_kl = t(-10.0, -12.0), t(-10.5, -11.0)  # the KL term is a constant for the gradient

    def fn(pc, pr):
        return kto_loss(pc, pr, policy_kl, ref_c, ref_r, ref_kl, 0.7, 1.3, 0.6).losses

    assert gradcheck(fn, (pc, pr))


def test_pairwise_reward_gradcheck():
    c, r = t(0.3, -1.2, 2.0, grad=True), t(0.1, 0.4, 2.5, grad=True)
    assert gradcheck(pairwise_reward_loss, (c, r))


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_gradcheck(average):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 3, IGNORE_INDEX, 0], [2, IGNORE_INDEX, 1, 1, 2]])
    assert gradcheck(lambda x: sequence_logps(x, labels, average=average, chunk_rows=3).logps, (logits,))


# ---------------------------------------------------------------- sequence_logps


def test_sequence_logps_by_hand():
    # One sequence, V = 2. Position 0 predicts labels[1] = 0, position 1 predicts labels[2] = 1;
    # position 2 has nothing to predict and labels[0] (the prompt) is ignored.
    logits = torch.tensor([[[1.0, 0.0], [0.5, 2.0], [9.0, -9.0]]], dtype=torch.float64)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    first = 1.0 - math.log(math.exp(1.0) + math.exp(0.0))
    second = 2.0 - math.log(math.exp(0.5) + math.exp(2.0))
    summed = sequence_logps(logits, labels)
    assert summed.logps.item() == pytest.approx(first + second)
    assert summed.token_counts.tolist() == [2]
    averaged = sequence_logps(logits, labels, average=True)
    assert averaged.logps.item() == pytest.approx((first + second) / 2)


def naive_sequence_logps(logits, labels, average=False):
    """The textbook way: a full log-softmax, shift, gather, mask."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = (picked * keep).sum(-1)
    counts = keep.sum(-1)
    return (logps / counts.clamp(min=1) if average else logps), counts


@pytest.mark.parametrize("chunk_rows", [1, 4, 128])
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_equals_full_log_softmax(chunk_rows, average):
    torch.manual_seed(1)
    logits = torch.randn(3, 9, 50, requires_grad=True)
    labels = torch.randint(0, 50, (3, 9))
    labels[0, :4] = IGNORE_INDEX  # a prompt: labels 4..8 are scored
    labels[1, 6:] = IGNORE_INDEX  # padding: labels 1..5 are scored
    labels[2, :] = IGNORE_INDEX  # nothing to score: 0 tokens, log-prob 0
    ours = sequence_logps(logits, labels, average=average, chunk_rows=chunk_rows)
    ours_grad = torch.autograd.grad(ours.logps.sum(), logits)[0]
    expected, counts = naive_sequence_logps(logits, labels, average)
    expected_grad = torch.autograd.grad(expected.sum(), logits)[0]
    torch.testing.assert_close(ours.logps, expected)
    torch.testing.assert_close(ours_grad, expected_grad)
    assert ours.token_counts.tolist() == counts.tolist() == [5, 5, 0]
    assert ours.logps[2].item() == 0.0


def test_sequence_logps_upcasts_bfloat16_logits_and_returns_their_gradient():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 30).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 30, (2, 6))
    labels[:, :2] = IGNORE_INDEX
    ours = sequence_logps(logits, labels, chunk_rows=4)
    assert ours.logps.dtype == torch.float32
    (ours_grad,) = torch.autograd.grad(ours.logps.sum(), logits)
    assert ours_grad.dtype == torch.bfloat16
    expected, _ = naive_sequence_logps(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(ours.logps, expected)
    torch.testing.assert_close(ours_grad, expected_grad)


def test_sequence_logps_custom_ignore_index_and_shape_check():
    logits = torch.zeros(1, 3, 4)
    labels = torch.tensor([[7, 1, 7]])  # only labels[1] counts: log(1/4)
    out = sequence_logps(logits, labels, ignore_index=7)
    assert out.logps.item() == pytest.approx(math.log(0.25))
    with pytest.raises(ValueError, match="disagree"):
        sequence_logps(logits, torch.zeros(1, 4, dtype=torch.long))


def test_sequence_logps_skips_prompt_windows_and_leaves_the_logits_untouched():
    torch.manual_seed(3)
    logits = torch.randn(2, 10, 20, requires_grad=True)
    before = logits.detach().clone()
    labels = torch.randint(0, 20, (2, 10))
    labels[:, :6] = IGNORE_INDEX  # every row's first windows have no label token at all
    ours = sequence_logps(logits, labels, chunk_rows=2)
    (ours_grad,) = torch.autograd.grad(ours.logps.sum(), logits)
    expected, _ = naive_sequence_logps(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(ours.logps, expected)
    torch.testing.assert_close(ours_grad, expected_grad)
    assert ours_grad[:, :5].abs().sum().item() == 0.0 and ours_grad[:, -1].abs().sum().item() == 0.0
    assert torch.equal(logits.detach(), before)
