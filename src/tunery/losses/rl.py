r"""Reinforcement-learning objectives (PPO, GRPO) and their helpers as pure tensor functions.

Shapes: per-token quantities are ``(B, T)`` completion-aligned tensors with a
``mask`` ``(B, T)`` (1 on real completion tokens, 0 on padding) or, inside the
losses, flat vectors ``(N,)`` of the completion tokens of a batch. Sequence-level
quantities are ``(B,)``. Log-probabilities are :math:`\log\pi(y_t \mid x, y_{<t})`.

The formulas and defaults follow TRL (``PPOTrainer`` of TRL 0.11 for PPO, the
adaptive KL controller of Ziegler et al. 2019, ``GRPOTrainer`` for GRPO) and
Dr. GRPO (Liu et al. 2025) for the length-unbiased variant, so LLaMA-Factory's
``ppo_*`` keys mean the same thing here. Functions return per-token or
per-sequence losses where the stage decides the normalisation, sums where it
does not.
"""

import math
from typing import NamedTuple

import torch

from tunery.losses import LOSSES

# TRL's PPO defaults (LLaMA-Factory does not expose them).
PPO_CLIP_RANGE = 0.2
PPO_VALUE_CLIP_RANGE = 0.2
PPO_VALUE_COEF = 0.1
PPO_GAMMA = 1.0
PPO_LAMBDA = 0.95
KL_INIT_COEF = 0.2
KL_HORIZON = 10000


class ClippedLoss(NamedTuple):
    """Per-token losses and, detached, whether clipping was active at each token."""

    losses: torch.Tensor  # (N,)
    clipped: torch.Tensor  # (N,) float 0/1, detached


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    r"""Per-token estimate of :math:`KL(\pi \,\|\, \pi_{ref})` from samples of :math:`\pi` (Schulman 2020).

    With :math:`r = \log\pi_{ref}(y_t) - \log\pi(y_t)` (any shape, elementwise):

    - ``k1`` = :math:`-r` (unbiased, can be negative; PPO's per-token reward penalty),
    - ``k3`` = :math:`e^{r} - r - 1` (unbiased, always :math:`\ge 0`; GRPO's penalty).
    """
    log_ratio = ref_logps - logps
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (same shape)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``values`` where ``mask`` is 1 (as TRL's ``masked_var``)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = masked_mean((values - mean) ** 2, mask)
    return variance * count / (count - 1).clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    r""":math:`(v - \mu) / \sqrt{\sigma^2 + \epsilon}` over the masked entries (``shift_mean=False``
    adds the mean back: only the scale changes). Masked-out entries come back as 0."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = PPO_GAMMA, lam: float = PPO_LAMBDA) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalised advantage estimation (Schulman et al. 2016), by a reverse scan over ``T``.

    ``rewards``, ``values``, ``mask``: ``(B, T)``, completions left-aligned (mask 1 then 0).
    With :math:`\delta_t = r_t + \gamma V_{t+1} - V_t` (:math:`V_{t+1} = 0` past the last token)

    .. math:: A_t = \delta_t + \gamma\lambda A_{t+1}, \qquad R_t = A_t + V_t

    Returns ``(advantages, returns)`` ``(B, T)``, zero where ``mask`` is 0 (no gradient).
    """
    rewards, values, mask = rewards.detach(), values.detach(), mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t] * mask[:, t]
    return advantages, (advantages + values) * mask


@LOSSES.register("ppo")
def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                    clip_range: float = PPO_CLIP_RANGE) -> ClippedLoss:
    r"""PPO's clipped surrogate (Schulman et al. 2017), per token ``(N,)``.

    .. math::
        \rho_t = e^{\log\pi_\theta(y_t) - \log\pi_{old}(y_t)}, \qquad
        L_t = \max\big(-A_t\rho_t,\; -A_t\,\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\big)

    ``clipped`` marks tokens where the clipped term is the larger one (TRL's ``pg_clipfrac``).
    """
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return ClippedLoss(torch.maximum(unclipped, clipped), (clipped > unclipped).float().detach())


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   clip_range: float = PPO_VALUE_CLIP_RANGE) -> ClippedLoss:
    r"""Clipped value loss, per token ``(N,)``:

    .. math::
        L^V_t = \tfrac12\max\big((V_t - R_t)^2,\;
        (\mathrm{clip}(V_t, V^{old}_t - \epsilon_v, V^{old}_t + \epsilon_v) - R_t)^2\big)
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    plain, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return ClippedLoss(0.5 * torch.maximum(plain, clipped), (clipped > plain).float().detach())


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    r"""GRPO's advantages ``(B,)`` for ``B = groups x group_size`` rewards, a group's members adjacent:

    .. math:: A_i = \frac{r_i - \mathrm{mean}(r_{group})}{\mathrm{std}(r_{group}) + \epsilon}

    (unbiased std, as TRL). A group whose rewards are all equal teaches nothing: its advantages are 0.
    """
    grouped = rewards.reshape(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    advantages = (grouped - mean) / (std + eps)
    return torch.where(std > 0, advantages, torch.zeros_like(advantages)).reshape(-1)


@LOSSES.register("grpo")
def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, sequence_ids: torch.Tensor, sequence_lengths: torch.Tensor,
              beta: float, epsilon: float, loss_type: str = "grpo", max_length: int = 1) -> ClippedLoss:
    r"""GRPO (Shao et al. 2024) per *sequence*: ``losses`` ``(S,)``, ``clipped`` per token ``(N,)``.

    Inputs per completion token ``(N,)``: log-probs under the policy, the sampling (old)
    policy and the reference (``None`` when ``beta`` is 0), the advantage of the token's
    sequence, and ``sequence_ids`` (which of the ``S`` sequences the token belongs to);
    ``sequence_lengths`` ``(S,)``. Per token

    .. math::
        \ell_t = -\min\big(\rho_t A,\; \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon) A\big)
                 + \beta\,\big(e^{\log\pi_{ref} - \log\pi_\theta} - (\log\pi_{ref} - \log\pi_\theta) - 1\big)

    and a sequence's loss is :math:`\sum_t \ell_t / |o_i|` (``loss_type: grpo``) or
    :math:`\sum_t \ell_t / L_{max}` with the constant ``max_length`` (``dr_grpo``, Liu et al.
    2025, which removes GRPO's bias towards long wrong answers). The stage averages over sequences.
    """
    per_token = ppo_policy_loss(logps, old_logps, advantages, epsilon)
    losses = per_token.losses
    if ref_logps is not None and beta:
        losses = losses + beta * kl_penalty(logps, ref_logps, "k3")
    count = sequence_lengths.shape[0]
    sums = torch.zeros(count, dtype=losses.dtype, device=losses.device).index_add(0, sequence_ids, losses)
    if loss_type == "grpo":
        return ClippedLoss(sums / sequence_lengths.to(sums.dtype).clamp(min=1), per_token.clipped)
    if loss_type == "dr_grpo":
        return ClippedLoss(sums / max_length, per_token.clipped)
    raise ValueError(f"unknown grpo_loss_type {loss_type!r}; use grpo or dr_grpo")


class AdaptiveKLController:
    r"""Ziegler et al. (2019): steer the KL coefficient so the policy's KL stays near ``target``.

    After each batch of ``n_steps`` rollouts with measured KL :math:`\mathrm{KL}`:

    .. math::
        e = \mathrm{clip}(\mathrm{KL}/\mathrm{target} - 1, -0.2, 0.2), \qquad
        \beta \leftarrow \beta\,(1 + e \cdot n_{steps} / \mathrm{horizon})
    """

    def __init__(self, target: float, init_coef: float = KL_INIT_COEF, horizon: int = KL_HORIZON):
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value


class RunningMoments:
    """Running mean and (population) std of every value seen, merged batch by batch (Chan et al.)."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 1e-24):
        self.mean, self.var, self.count = mean, var, count

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().reshape(-1)
        batch_count = values.numel()
        batch_mean, batch_var = float(values.mean()), float(values.var(unbiased=False))
        delta, total = batch_mean - self.mean, self.count + batch_count
        moment = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean += delta * batch_count / total
        self.var, self.count = moment / total, total
