"""RMSNorm as one autograd node: fewer temporaries, less heap fragmentation, the same forward.

Why: transformers writes Llama's RMSNorm as five tensor ops (``pow``, ``mean``,
``rsqrt``, two ``mul``). Autograd keeps each op's inputs, runs one backward kernel per
op, and every op leaves a ``tokens x hidden`` temporary behind. On the CPU those
temporaries are what fragments the C heap between a layer's saved activations: the
SFT benchmark's peak fell by ~110 MB with this patch and ``rotary``'s. ``RMSNormFunction``
computes the forward as transformers does, bit for bit (in fp32, then cast back), with one
temporary fewer, saves only the input and the per-token ``1/rms``, and writes the backward
by hand (equal to autograd's to rounding)::

    r = 1 / sqrt(mean(x²) + eps)     x̂ = x r      y = w x̂
    dx = r (g w - x̂ mean(g w x̂))     dw = Σ_tokens g x̂

What: ``apply(model)`` swaps the ``forward`` of each RMSNorm *instance* whose class is
in ``NORM_CLASSES``: classes whose forward is, in the gated transformers versions,
Llama's line for line (a test checks the source). Gemma's ``(1 + w)`` norm is not one
of them. Nothing global changes. Version-gated on transformers.
"""


import torch
import transformers
from packaging.version import Version

from tunery.model.patches.instances import in_range, swap_forward

NAME = "rms_norm"
SUPPORTED = (Version("5.0.0"), Version("6.0.0"))
NORM_CLASSES = frozenset({
    "LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "GraniteRMSNorm", "SmolLM3RMSNorm",
    "Ministral3RMSNorm", "Phi3RMSNorm", "GlmRMSNorm", "Glm4RMSNorm", "DeepseekV3RMSNorm", "ArceeRMSNorm",
})


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 as transformers computes the norm (float64 stays float64, for gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


class RMSNormFunction(torch.autograd.Function):
    """``w * (x / rms(x))`` in fp32, cast back to ``x``'s dtype before the weight, as transformers does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        wide = x.to(compute_dtype(x))
        inv_rms = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True).add_(eps))
        normed = (wide * inv_rms).to(x.dtype)
        ctx.save_for_backward(x, weight, inv_rms)
        if normed.dtype == torch.promote_types(normed.dtype, weight.dtype):
            return normed.mul_(weight)  # in place: the product's dtype is normed's
        return weight * normed

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, inv_rms = ctx.saved_tensors
        wide = x.to(compute_dtype(x))
        normed = wide * inv_rms
        grad_normed = (grad * weight).to(wide.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            projection = (grad_normed * normed).mean(-1, keepdim=True)
            grad_x = grad_normed.sub_(normed * projection).mul_(inv_rms).to(x.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            per_token = grad.to(wide.dtype) * normed.to(x.dtype).to(wide.dtype)
            grad_weight = per_token.reshape(-1, per_token.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_weight, None


def fused_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)


def supported(version: str = transformers.__version__) -> bool:
    return in_range(version, SUPPORTED)


def apply(model: torch.nn.Module) -> int:
    """Fuse every matching RMSNorm in ``model``; returns how many were patched."""
    if not supported():
        return 0
    return swap_forward(model, lambda module: type(module).__name__ in NORM_CLASSES, fused_forward)
