r"""Preference and reward objectives (DPO family, ORPO, SimPO, KTO, pairwise reward) as pure tensor functions.

Every objective takes per-sequence log-probabilities (or reward-model scores) and
returns *per-example* losses; the training stage reduces them (mean over the batch,
plus any SFT term) so that it stays in charge of normalisation across micro-batches.
The formulas and argument order follow TRL's ``DPOTrainer.dpo_loss`` /
``KTOTrainer.kto_loss`` and LLaMA-Factory's ``odds_ratio_loss`` / ``simpo_loss``, so
configs tuned for LLaMA-Factory (``pref_beta``, ``dpo_label_smoothing``,
``simpo_gamma`` ...) mean the same thing here.

Return values are ``NamedTuple``\ s: unpack them as tuples or read the fields by name.
Rewards are always detached, they are for logging (``rewards/chosen``, ``rewards/margins``...)
and must never carry gradient.

``sequence_logps`` turns a model's ``(B, T, V)`` logits into the per-sequence
log-probabilities the objectives take, without an extra full-size float32 copy of the logits.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from tunery.errors import ConfigError
from tunery.labels import IGNORE_INDEX
from tunery.losses import LOSSES

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")
# (batch x positions) rows of logits handled at once by sequence_logps: 128 rows x 49k vocab x fp32
# is 25 MB per temporary, the same budget as the chunked cross-entropy in losses/lm.py.
DEFAULT_CHUNK_ROWS = 128
LOG_2 = 0.6931471805599453


class PreferenceLoss(NamedTuple):
    """Per-example losses and the detached implicit rewards of the chosen and rejected responses."""

    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,), detached
    rejected_rewards: torch.Tensor  # (B,), detached


class KTOLoss(NamedTuple):
    """KTO's per-example losses (desirable first, then undesirable), rewards and the KL estimate."""

    losses: torch.Tensor  # (Nc + Nr,)
    chosen_rewards: torch.Tensor  # (Nc,), detached
    rejected_rewards: torch.Tensor  # (Nr,), detached
    kl: torch.Tensor  # (), detached, >= 0


class SequenceLogps(NamedTuple):
    """Per-sequence log-probabilities of the labels and the number of label tokens behind each."""

    logps: torch.Tensor  # (B,), float32 (float64 for float64 logits)
    token_counts: torch.Tensor  # (B,), int64


@LOSSES.register("dpo")
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    r"""DPO (Rafailov et al. 2023) and its hinge (SLiC) and IPO (Azar et al. 2023) variants.

    All inputs have shape ``(B,)``: the log-probability of each chosen / rejected response
    under the policy :math:`\pi_\theta` and under the frozen reference :math:`\pi_{ref}`.
    With the log-ratio margin

    .. math::
        h = \big(\log\pi_\theta(y_c|x) - \log\pi_\theta(y_r|x)\big)
          - \big(\log\pi_{ref}(y_c|x) - \log\pi_{ref}(y_r|x)\big)

    the per-example losses ``(B,)`` are

    - ``sigmoid`` (DPO, conservative cDPO with label smoothing :math:`\varepsilon`):
      :math:`-(1-\varepsilon)\log\sigma(\beta h) - \varepsilon\log\sigma(-\beta h)`
    - ``hinge``: :math:`\max(0,\ 1 - \beta h)` (``label_smoothing`` is ignored)
    - ``ipo``: :math:`\big(h - \tfrac{1}{2\beta}\big)^2` (``label_smoothing`` is ignored).
      LLaMA-Factory feeds IPO *average* per-token log-probs (``sequence_logps(average=True)``)
      and the other two summed ones; the caller chooses.

    Implicit rewards ``(B,)``, detached: :math:`\beta(\log\pi_\theta(y_c|x) - \log\pi_{ref}(y_c|x))`
    and the same for :math:`y_r`.
    """
    check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        known = ", ".join(DPO_LOSS_TYPES)
        raise ConfigError(f"Unknown pref_loss '{loss_type}' for DPO: use one of {known} (or orpo / simpo).")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ConfigError(
            f"dpo_label_smoothing must be between 0 and 0.5 (the assumed label-flip probability), "
            f"got {label_smoothing}."
        )
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    margin = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * margin)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * margin)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * margin)
    else:  # ipo: regress the margin onto 1 / (2 beta) instead of pushing it to infinity
        losses = (margin - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


@LOSSES.register("orpo")
def orpo_loss(
    chosen_logps_avg: torch.Tensor, rejected_logps_avg: torch.Tensor, beta: float
) -> PreferenceLoss:
    r"""ORPO's odds-ratio term (Hong et al. 2024), reference-free.

    Inputs ``(B,)`` are the policy's AVERAGE per-token log-probabilities
    :math:`c = \frac{1}{|y_c|}\log P_\theta(y_c|x)` and :math:`r` likewise (both < 0). With
    :math:`\log\mathrm{odds}(p) = \log p - \log(1 - p)`:

    .. math::
        \ell_{OR} = -\log\sigma\Big((c - r) - \big(\log(1 - e^{c}) - \log(1 - e^{r})\big)\Big)

    Returns :math:`\ell_{OR}` per example ``(B,)`` only. ORPO's full objective also has the SFT
    negative log-likelihood of the chosen response; the caller combines them as LLaMA-Factory
    does, ``loss = sft_loss + beta * or_loss`` with ``sft_loss = -chosen_logps_avg``.
    Rewards ``(B,)``, detached: :math:`\beta c` and :math:`\beta r`.

    An average log-prob of exactly 0 (probability 1 in float rounding) would make
    :math:`\log(1 - e^{c})` infinite; inside that term inputs are clamped to at most ``-eps`` of
    their dtype (1.2e-7 in float32), so the loss stays finite and its gradient is not NaN.
    """
    check_beta(beta)
    log_odds = (chosen_logps_avg - rejected_logps_avg) - (
        log1mexp(chosen_logps_avg) - log1mexp(rejected_logps_avg)
    )
    losses = -F.logsigmoid(log_odds)
    return PreferenceLoss(losses, beta * chosen_logps_avg.detach(), beta * rejected_logps_avg.detach())


@LOSSES.register("simpo")
def simpo_loss(
    chosen_logps_avg: torch.Tensor, rejected_logps_avg: torch.Tensor, beta: float, gamma: float
) -> PreferenceLoss:
    r"""SimPO (Meng et al. 2024): a length-normalised, reference-free margin loss.

    Inputs ``(B,)`` are the policy's AVERAGE per-token log-probabilities :math:`c`, :math:`r`;
    ``gamma`` is LLaMA-Factory's ``simpo_gamma``, the target reward margin :math:`\gamma`:

    .. math::
        \ell = -\log\sigma\big(\beta (c - r) - \gamma\big)
             = -\log\sigma\big(\beta\,((c - r) - \gamma/\beta)\big)

    (the second form is how LLaMA-Factory writes it). Losses ``(B,)``; rewards ``(B,)``,
    detached: :math:`\beta c` and :math:`\beta r`.
    """
    check_beta(beta)
    logits = (chosen_logps_avg - rejected_logps_avg) - gamma / beta
    losses = -F.logsigmoid(beta * logits)
    return PreferenceLoss(losses, beta * chosen_logps_avg.detach(), beta * rejected_logps_avg.detach())


@LOSSES.register("kto")
def kto_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    policy_kl_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    reference_kl_logps: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLoss:
    r"""KTO (Ethayarajh et al. 2024) on a batch of unpaired desirable / undesirable examples.

    Shapes: ``policy_chosen_logps`` and ``reference_chosen_logps`` ``(Nc,)`` for the desirable
    examples, ``*_rejected_logps`` ``(Nr,)`` for the undesirable ones (either may be empty),
    ``*_kl_logps`` ``(Nk,)`` for the mismatched (prompt, other response) pairs behind the KL
    estimate. The reference point is the batch estimate of :math:`KL(\pi_\theta\|\pi_{ref})`,
    clamped at 0 and not differentiated:

    .. math::
        z_0 = \mathrm{sg}\Big[\max\Big(0,\ \tfrac{1}{N_k}\textstyle\sum_k
              \log\pi_\theta(y'_k|x_k) - \log\pi_{ref}(y'_k|x_k)\Big)\Big],\qquad
        \rho(x, y) = \log\pi_\theta(y|x) - \log\pi_{ref}(y|x)

    .. math::
        \ell_{desirable} = \lambda_D\big(1 - \sigma(\beta(\rho - z_0))\big),\qquad
        \ell_{undesirable} = \lambda_U\big(1 - \sigma(\beta(z_0 - \rho))\big)

    with :math:`\lambda_D` = ``desirable_weight`` (``kto_chosen_weight``) and :math:`\lambda_U`
    = ``undesirable_weight`` (``kto_rejected_weight``). Returns ``KTOLoss``: ``losses``
    ``(Nc + Nr,)`` (desirable first, as TRL concatenates them), detached rewards
    :math:`\beta\rho` ``(Nc,)`` and ``(Nr,)``, and ``kl`` = :math:`z_0` (a 0-d tensor).
    An empty ``*_kl_logps`` gives :math:`z_0 = 0`.
    """
    check_beta(beta)
    kl = kl_estimate(policy_kl_logps, reference_kl_logps)
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    chosen_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (chosen_logratios - kl)))
    rejected_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - rejected_logratios)))
    return KTOLoss(
        torch.cat((chosen_losses, rejected_losses)),
        beta * chosen_logratios.detach(),
        beta * rejected_logratios.detach(),
        kl,
    )


def kl_estimate(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: mean policy/reference log-ratio of the mismatched pairs, >= 0, detached."""
    if policy_kl_logps.numel() == 0:
        return policy_kl_logps.new_zeros(())
    return (policy_kl_logps - reference_kl_logps).mean().clamp(min=0).detach()


@LOSSES.register("pairwise_reward")
def pairwise_reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    r"""Bradley-Terry reward-model loss (Ouyang et al. 2022), per pair.

    ``chosen_scores`` and ``rejected_scores`` ``(B,)`` are the scalar rewards :math:`r_c`,
    :math:`r_r` of the two responses to the same prompt. Returns ``(B,)``
    :math:`-\log\sigma(r_c - r_r)`; the caller takes the mean over the batch.
    """
    return -F.logsigmoid(chosen_scores - rejected_scores)


def reward_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs ``(B,)`` whose chosen response scores strictly higher: a 0-d float tensor.

    Ties count as wrong (as in LLaMA-Factory's ``ComputeAccuracy``). Not differentiable.
    """
    return (chosen_scores > rejected_scores).float().mean()


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    average: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> SequenceLogps:
    r"""Log-probability of each sequence's labels under ``logits``, summed or averaged over its label tokens.

    ``logits`` ``(B, T, V)``, ``labels`` ``(B, T)`` unshifted (``ignore_index`` = not scored):
    position :math:`t` predicts label :math:`t+1`, so with
    :math:`\mathcal{S}_b = \{t : y_{b,t+1} \ne \text{ignore}\}`

    .. math::
        \log p_b = \sum_{t\in\mathcal{S}_b}\Big(z_{b,t,y_{b,t+1}} - \log\sum_v e^{z_{b,t,v}}\Big),
        \qquad n_b = |\mathcal{S}_b|

    and with ``average=True`` :math:`\log p_b / n_b` (0 for a sequence with no label tokens).
    Returns ``SequenceLogps(logps (B,), token_counts (B,) int64)``; ``logps`` is float32
    (float64 for float64 logits), whatever the logits' dtype.

    Memory: no log-softmax of the whole ``(B, T, V)`` is ever built. ``TokenLogps`` runs
    ``gather - logsumexp`` over windows of ``chunk_rows`` (batch x positions) rows, upcasting
    one window at a time, keeps only the logits (no copy) and the ``(B, T)`` logsumexp for
    backward, and writes the gradient ``onehot - softmax`` window by window into one
    logits-sized tensor, the only full-size allocation. Windows with no label token are skipped.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    targets = labels[:, 1:].to(logits.device)
    keep = targets != ignore_index
    safe_targets = targets.masked_fill(~keep, 0)  # any valid index; these positions are zeroed
    window = max(1, chunk_rows // max(1, logits.shape[0]))
    per_token = TokenLogps.apply(logits, safe_targets, keep, window)
    logps = per_token.sum(dim=1)
    counts = keep.sum(dim=1)
    if average:
        logps = logps / counts.clamp(min=1)
    return SequenceLogps(logps, counts)


class TokenLogps(torch.autograd.Function):
    """``log_softmax(logits[:, :-1])`` at ``targets`` where ``keep``, else 0: ``(B, T, V)`` -> ``(B, T-1)``.

    d logp_t / d z_t = onehot(target_t) - softmax(z_t), computed in backward from the saved
    logits and logsumexp, one window of positions at a time.
    """

    @staticmethod
    def forward(ctx, logits, targets, keep, window):
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        per_token = torch.zeros(targets.shape, dtype=dtype, device=logits.device)
        lse = torch.zeros(targets.shape, dtype=dtype, device=logits.device)
        positions = logits[:, :-1]  # a view: position t predicts target t
        for cols in windows_with_labels(keep, window):
            z = positions[:, cols].to(dtype)
            lse[:, cols] = torch.logsumexp(z, dim=-1)
            per_token[:, cols] = z.gather(-1, targets[:, cols, None]).squeeze(-1) - lse[:, cols]
        per_token.masked_fill_(~keep, 0.0)
        ctx.save_for_backward(logits, targets, keep, lse)
        ctx.window = window
        return per_token

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        logits, targets, keep, lse = ctx.saved_tensors
        grad_tokens = (grad_output * keep).to(lse.dtype)  # ignored positions get no gradient
        grad = torch.zeros_like(logits)  # the last position predicts nothing and keeps 0
        positions, grad_positions = logits[:, :-1], grad[:, :-1]
        for cols in windows_with_labels(keep, ctx.window):
            g = grad_tokens[:, cols, None]
            # Out of place first: .to() of float32 logits is the logits themselves, not a copy.
            piece = (positions[:, cols].to(lse.dtype) - lse[:, cols, None]).exp_().mul_(-g)  # -softmax * g
            piece.scatter_add_(-1, targets[:, cols, None], g)
            grad_positions[:, cols] = piece.to(grad.dtype)
        return grad, None, None, None


def windows_with_labels(keep: torch.Tensor, window: int) -> list[slice]:
    """Slices of ``window`` positions over ``keep`` ``(B, T-1)``, leaving out those with no label at all."""
    has_label = keep.any(dim=0).tolist()
    spans = (slice(start, start + window) for start in range(0, len(has_label), window))
    return [span for span in spans if any(has_label[span])]


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 - e^{x})` for :math:`x < 0`, accurate near 0 and for very negative x (Mächler 2012).

    Inputs are clamped to at most ``-eps`` of their dtype, so :math:`x = 0` gives a large finite
    value (about -16 in float32) instead of -inf, and zero gradient instead of NaN.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    near_zero = x > -LOG_2  # the switch point between the two accurate forms
    # Each branch gets harmless inputs where it is not selected: torch.where's backward
    # multiplies the unselected branch's derivative by 0, and 0 * inf would be NaN.
    close = torch.log(-torch.expm1(torch.where(near_zero, x, -1.0)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x)))
    return torch.where(near_zero, close, far)


def check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"pref_beta must be a positive number (the KL / reward scale), got {beta}.")
