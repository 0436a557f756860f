"""Fused SwiGLU for Llama-style MLPs: one tensor fewer saved for backward per layer.

Why: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` as transformers writes it
leaves autograd holding four ``tokens x intermediate_size`` tensors per layer
(the gate for SiLU's backward, SiLU's output and the up projection for the
product's backward, and the product for ``down_proj``): half of a small model's
saved activations. ``SiluMul`` saves only the gate and the up projection and
recomputes SiLU in backward (one cheap elementwise pass), so a quarter of the MLP's
saved activations disappears. Forward and gradients are bit-identical: the
backward uses the same ATen kernels (``silu``, ``silu_backward``, ``mul``) that
autograd would. When LoRA wraps ``down_proj`` (and ``lora_linear`` fused it), the
product is not saved at all but recomputed in backward
(``lora_linear.silu_mul_down``): another quarter of the MLP's saved activations.

What: ``apply(model)`` swaps the ``forward`` of each MLP *instance* in the model
whose class is one of ``MLP_CLASSES`` (their forward is exactly the line above in
the gated transformers versions) and whose activation is SiLU. Nothing global
changes; other models in the process keep the stock code. Version-gated: a
transformers release outside ``SUPPORTED`` leaves the model untouched.
"""

import types

import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version

from tunery.model.patches import lora_linear

NAME = "swiglu"
# transformers versions whose MLP_CLASSES forward is `down_proj(act_fn(gate_proj(x)) * up_proj(x))`
SUPPORTED = (Version("5.0.0"), Version("6.0.0"))
MLP_CLASSES = frozenset({
    "LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Olmo2MLP", "OlmoMLP", "GraniteMLP",
    "CohereMLP", "SmolLM3MLP", "Ministral3MLP",
})
SILU_NAMES = frozenset({"SiLU", "SiLUActivation"})


class SiluMul(torch.autograd.Function):
    """``silu(gate) * up``, saving only ``gate`` and ``up`` for backward."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            # autograd's chain: d(silu(g) * u)/d silu = grad * u, then silu_backward
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        if ctx.needs_input_grad[1]:
            grad_up = grad * F.silu(gate)
        return grad_gate, grad_up


def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    # a fused LoRA down projection also recomputes the product instead of saving it
    fused = lora_linear.silu_mul_down(self.down_proj, gate, up)
    return fused if fused is not None else self.down_proj(SiluMul.apply(gate, up))


def supported(version: str = transformers.__version__) -> bool:
    low, high = SUPPORTED
    return low <= Version(version) < high


def is_swiglu_mlp(module: torch.nn.Module) -> bool:
    if type(module).__name__ not in MLP_CLASSES or type(module).forward is fused_forward:
        return False
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    return all(hasattr(module, part) for part in parts) and type(module.act_fn).__name__ in SILU_NAMES


def apply(model: torch.nn.Module) -> int:
    """Fuse the SwiGLU of every matching MLP in ``model``; returns how many were patched."""
    if not supported():
        return 0
    count = 0
    for module in model.modules():
        if is_swiglu_mlp(module) and "forward" not in vars(module):
            module.forward = types.MethodType(fused_forward, module)
            count += 1
    return count
