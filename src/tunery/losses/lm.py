"""Causal language-model loss that only ever computes the logits it needs.

The full-vocabulary logits of a batch are the largest tensor in LM training
(``tokens x vocab``, 49k columns for SmolLM2, 150k for Qwen) and most of them
belong to prompt or padding positions whose loss is thrown away. Here the
decoder runs once to give the final hidden states, only the positions whose
shifted label is not -100 are kept, and the output head plus cross-entropy run
over those rows in chunks whose logits are freed as soon as the chunk's loss
and gradient are known.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunery.losses import LOSSES

IGNORE_INDEX = -100
# Rows per chunk: 128 x 49k vocab x fp32 = 25 MB of logits (plus as much again for logsumexp),
# alive at the end of the forward pass together with all saved activations, so they add to
# peak memory: 128 rows instead of 256 lowered the benchmark's peak RSS by ~50-100 MB, and 128
# rows still keep the head matmul efficient.
DEFAULT_CHUNK_SIZE = 128


@LOSSES.register("causal_lm")
def causal_lm_loss(
    model: torch.nn.Module, batch: dict, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Summed next-token cross-entropy over label positions, and the number of those positions.

    With final hidden states :math:`h_{b,t}`, output head :math:`W` (and bias :math:`c`),
    labels :math:`y` (unshifted, -100 = ignore) and the model's logit transform
    :math:`g` (identity, or :math:`s\tanh(z/s)` for ``final_logit_softcapping`` s, times
    ``logit_scale`` / divided by ``logits_scaling`` where the config has them):

    .. math::
        \mathcal{S} = \{(b, t) : y_{b,t+1} \neq -100\},\qquad
        z_{b,t} = g(W h_{b,t} + c),\\
        \text{loss\_sum} = \sum_{(b,t)\in\mathcal{S}}
            \Big(\log\sum_{v} e^{z_{b,t,v}} - z_{b,t,\,y_{b,t+1}}\Big),\qquad
        \text{n\_tokens} = |\mathcal{S}|.

    ``batch`` holds the model's keyword arguments (``input_ids``, ``position_ids``,
    ``attention_mask``, ``cu_seq_lens_*`` ...) plus ``labels``. Cross-entropy is computed
    in float32 whatever the model dtype. The caller divides ``loss_sum`` by the label
    tokens of all micro-batches (and processes) of an optimizer step, which weights
    every token equally however the examples are batched.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    labels = batch["labels"].to(hidden.device)
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]
    n_tokens = keep.sum()
    head = base.get_output_embeddings()
    transform = LogitTransform.from_config(base.config)
    loss_sum = head_cross_entropy(head, selected, targets[keep], transform, chunk_size)
    return loss_sum, n_tokens


class LogitTransform:
    """What a model's ``ForCausalLM.forward`` does to ``lm_head`` output before the loss.

    ``temperature`` divides the final logits, as sampling does: RL stages score the
    completions they sampled at temperature T under the distribution they came from.
    """

    def __init__(self, scale: float = 1.0, softcap: float | None = None, temperature: float = 1.0):
        self.scale = scale
        self.softcap = softcap
        self.temperature = temperature

    @classmethod
    def from_config(cls, config) -> "LogitTransform":
        scale = float(getattr(config, "logit_scale", None) or 1.0)  # Cohere multiplies
        divisor = getattr(config, "logits_scaling", None)  # Granite divides
        if divisor:
            scale /= float(divisor)
        return cls(scale, getattr(config, "final_logit_softcapping", None))

    def at_temperature(self, temperature: float) -> "LogitTransform":
        return LogitTransform(self.scale, self.softcap, temperature)

    def apply(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transformed float32 logits, plus ``tanh`` (kept for the softcap derivative) or None."""
        logits = logits.float()
        if self.scale != 1.0:
            logits = logits * self.scale
        squashed = None
        if self.softcap is not None:
            squashed = torch.tanh(logits / self.softcap)
            logits = squashed * self.softcap
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits, squashed


def head_cross_entropy(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    transform: LogitTransform,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` against ``targets``, chunk by chunk (float32)."""
    if type(head) is torch.nn.Linear:
        # A plain linear head: gradients are computed while each chunk's logits exist,
        # so backward needs neither stored logits nor a second head matmul.
        want = torch.is_grad_enabled()
        flags = (
            want and hidden.requires_grad,
            want and head.weight.requires_grad,
            want and head.bias is not None and head.bias.requires_grad,
        )
        return LinearCrossEntropy.apply(
            hidden, head.weight, head.bias, targets, transform, chunk_size, flags
        )
    # Any other head (LoRA on lm_head, modules_to_save wrappers, quantized layers): run it
    # per chunk under activation checkpointing, so only one chunk of logits is alive.
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        total = total + checkpoint(
            chunk_cross_entropy, head, hidden[rows], targets[rows], transform, use_reentrant=False
        )
    return total


def chunk_cross_entropy(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, transform: LogitTransform
) -> torch.Tensor:
    logits, _ = transform.apply(head(hidden))
    return F.cross_entropy(logits, targets, reduction="sum")


class LinearCrossEntropy(torch.autograd.Function):
    """``sum CE(g(hidden @ W.T + b), targets)`` with the gradients worked out chunk by chunk in forward.

    d loss / d z = softmax(z) - onehot(target); the chain through ``g`` and the linear
    layer gives the input, weight and bias gradients, which are stored (sizes of the
    inputs, not of the logits) and scaled by the incoming gradient in backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, transform, chunk_size, flags):
        need_hidden, need_weight, need_bias = flags
        # float32 accumulators: tiny (rows x hidden), and the backward scale (1 / tokens of the
        # whole step) is applied before rounding to the model dtype.
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h, t = hidden[rows], targets[rows]
            z, squashed, lse, target_logps = chunk_log_softmax(h, weight, bias, t, transform)
            total -= target_logps.sum()
            if not any(flags):
                continue
            grad = cross_entropy_logit_grad(z, lse, squashed, t, transform).to(weight.dtype)
            if need_hidden:
                grad_hidden[rows] = (grad @ weight).float()
            if need_weight:
                grad_weight += (grad.t() @ h.to(weight.dtype)).float()
            if need_bias:
                grad_bias += grad.float().sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output.float()
        hidden_dtype, weight_dtype = ctx.dtypes
        hidden_grad = (grad_hidden * scale).to(hidden_dtype) if grad_hidden is not None else None
        weight_grad = (grad_weight * scale).to(weight_dtype) if grad_weight is not None else None
        bias_grad = (grad_bias * scale).to(weight_dtype) if grad_bias is not None else None
        return hidden_grad, weight_grad, bias_grad, None, None, None, None


def chunk_log_softmax(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
    transform: LogitTransform,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One chunk through a linear head: transformed float32 logits, the softcap's ``tanh`` (or
    None), their log-sum-exp, and each row's target log-prob. The first three feed
    ``cross_entropy_logit_grad``."""
    z, squashed = transform.apply(F.linear(hidden, weight, bias))
    lse = torch.logsumexp(z, dim=-1)
    return z, squashed, lse, z.gather(1, targets[:, None]).squeeze(1) - lse


def cross_entropy_logit_grad(
    z: torch.Tensor, lse: torch.Tensor, squashed: torch.Tensor | None, targets: torch.Tensor,
    transform: LogitTransform,
) -> torch.Tensor:
    """d CE / d (head output) of a chunk: softmax(z) - onehot(target), chained through the
    transform ``g``. Overwrites ``z`` (and ``squashed``) to spare a logits-sized allocation."""
    grad = z.sub_(lse[:, None]).exp_()  # softmax, reusing the logits' memory
    grad[torch.arange(len(targets), device=grad.device), targets] -= 1.0
    if squashed is not None:
        grad.mul_(1.0 - squashed.square_())
    if transform.scale != transform.temperature:
        grad.mul_(transform.scale / transform.temperature)
    return grad


class LinearTokenLogps(torch.autograd.Function):
    """Per row, ``log softmax(g(hidden @ W.T + b))[target]`` of a FROZEN linear head (float32).

    Row t's log-prob depends on row t of ``hidden`` alone, so its whole gradient is the row
    ``-(softmax(z_t) - onehot(y_t))`` chained through ``g`` and ``W``. That row is computed while
    the chunk's logits exist and stored (rows x hidden, tiny); backward scales each row by its
    incoming gradient. Against recomputing the chunk under checkpointing this skips one head
    matmul and one log-softmax per chunk, and still never keeps logits. The head's own
    parameters get no gradient: callers use this only when they do not require one.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, transform, chunk_size):
        need_hidden = ctx.needs_input_grad[0]
        logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if need_hidden else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            t = targets[rows]
            z, squashed, lse, logps[rows] = chunk_log_softmax(hidden[rows], weight, bias, t, transform)
            if need_hidden:
                grad = cross_entropy_logit_grad(z, lse, squashed, t, transform).to(weight.dtype)
                grad_hidden[rows] = (grad @ weight).float().neg_()  # d logp = -d CE
        ctx.save_for_backward(grad_hidden)
        ctx.hidden_dtype = hidden.dtype
        return logps

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        hidden_grad = None
        if grad_hidden is not None:
            hidden_grad = (grad_hidden * grad_output.float()[:, None]).to(ctx.hidden_dtype)
        return hidden_grad, None, None, None, None, None
