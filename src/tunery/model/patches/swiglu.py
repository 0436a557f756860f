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
(``SiluMulLoraDown``): another quarter of the MLP's saved activations.

What: ``apply(model)`` swaps the ``forward`` of each MLP *instance* in the model
whose class is one of ``MLP_CLASSES`` (their forward is exactly the line above in
the gated transformers versions) and whose activation is SiLU. Fused LoRA gate and up
projections run together (``lora_siblings``). Nothing global
changes; other models in the process keep the stock code. Version-gated: a
transformers release outside ``SUPPORTED`` leaves the model untouched.
"""


import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version

from tunery.model.patches import lora_linear, lora_siblings
from tunery.model.patches.instances import in_range, swap_forward

NAME = "swiglu"
# transformers versions whose MLP_CLASSES forward is `down_proj(act_fn(gate_proj(x)) * up_proj(x))`
SUPPORTED = (Version("5.0.0"), Version("6.0.0"))
MLP_CLASSES = frozenset({
    "LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Olmo2MLP", "OlmoMLP", "GraniteMLP",
    "CohereMLP", "SmolLM3MLP", "Ministral3MLP",
})
SILU_NAMES = frozenset({"SiLU", "SiLUActivation"})


def silu_mul_grads(grad, gate, up, need_gate: bool = True, need_up: bool = True, activated=None):
    """Gradients of ``silu(gate) * up`` by the ATen chain autograd runs: ``grad * up`` then
    ``silu_backward`` for the gate, ``grad * silu(gate)`` for up (``activated``: ``silu(gate)``
    when the caller has it already)."""
    grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if need_gate else None
    if need_up and activated is None:
        activated = F.silu(gate)
    grad_up = grad * activated if need_up else None
    return grad_gate, grad_up


class SiluMul(torch.autograd.Function):
    """``silu(gate) * up``, saving only ``gate`` and ``up`` for backward."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        return silu_mul_grads(grad, gate, up, *ctx.needs_input_grad)


class SiluMulLoraDown(torch.autograd.Function):
    """``down(silu(gate) * up)`` for a fused-LoRA ``down``, recomputing the product in backward.

    The down projection would save its input, ``silu(gate) * up``, beside the gate and up
    projections that the SiLU's backward keeps anyway: a third ``tokens x intermediate``
    tensor per layer. Redoing the product costs one elementwise pass.
    """

    @staticmethod
    def forward(ctx, gate, up, weight, bias, lora_a, lora_b, scaling: float):
        lora_linear.remember(ctx, lora_a, lora_b, scaling, gate.shape)
        a, b = lora_a.to(gate.dtype), lora_b.to(gate.dtype)
        product = (F.silu(gate) * up).reshape(-1, gate.shape[-1])
        out, hidden = lora_linear.lora_forward(product, weight, bias, a, b, scaling)
        ctx.save_for_backward(gate, up, weight, a, b, hidden)
        return out.view(*gate.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        gate, up, weight, a, b, hidden = ctx.saved_tensors
        with torch.autocast(gate.device.type, enabled=False):
            activated = F.silu(gate)  # once, for the product and for up's gradient
            product = (activated * up).reshape(-1, gate.shape[-1])
            grad_product, grad_a, grad_b = lora_linear.lora_backward(
                ctx, grad_out, product, weight, a, b, hidden, need_x=True
            )
            grad_gate, grad_up = silu_mul_grads(grad_product.view(ctx.shape), gate, up, activated=activated)
        return grad_gate, grad_up, None, None, grad_a, grad_b, None


def lora_down(down: torch.nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    """``down(silu(gate) * up)`` through ``SiluMulLoraDown``, or None when ``down`` is not a
    fused LoRA layer that this call can take (the caller then runs the plain path)."""
    if not lora_linear.is_fused(down):
        return None
    name = lora_linear.plain_adapter(down, gate, (), {})
    if name is None:
        return None
    dtype = lora_linear.compute_dtype(gate)
    with torch.autocast(gate.device.type, enabled=False):  # the function chooses its dtypes
        return SiluMulLoraDown.apply(
            gate.to(dtype), up.to(dtype), *lora_linear.frozen_and_adapter(down, name, dtype)
        )


def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = lora_siblings.project((self.gate_proj, self.up_proj), x)
    # a fused LoRA down projection also recomputes the product instead of saving it
    fused = lora_down(self.down_proj, gate, up)
    return fused if fused is not None else self.down_proj(SiluMul.apply(gate, up))


def supported(version: str = transformers.__version__) -> bool:
    return in_range(version, SUPPORTED)


def is_swiglu_mlp(module: torch.nn.Module) -> bool:
    if type(module).__name__ not in MLP_CLASSES or type(module).forward is fused_forward:
        return False
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    return all(hasattr(module, part) for part in parts) and type(module.act_fn).__name__ in SILU_NAMES


def apply(model: torch.nn.Module) -> int:
    """Fuse the SwiGLU of every matching MLP in ``model``; returns how many were patched."""
    if not supported():
        return 0
    return swap_forward(model, is_swiglu_mlp, fused_forward)
