"""Rotary position embedding as one autograd node per tensor: no temporaries, nothing big saved.

Why: transformers applies RoPE as ``q * cos + rotate_half(q) * sin`` where
``rotate_half`` slices, negates and concatenates. For the query and the key of every
layer that is six kernels and four temporaries in forward, and in backward about ten
kernels, including ``slice_backward``'s zero-filled full-size copies: ~6 % of an fp32
CPU training step, and temporaries that fragment the C heap. ``RotaryFunction`` writes
each half of the output directly (with ``rotate_half(x) = [-x₂, x₁]``)::

    y₁ = x₁ cos₁ - x₂ sin₁        dx₁ = g₁ cos₁ + g₂ sin₂
    y₂ = x₂ cos₂ + x₁ sin₂        dx₂ = g₂ cos₂ - g₁ sin₁

and saves only ``cos`` and ``sin``, which every layer shares. Each product is rounded
before the sum, as in transformers' expression, so forward and backward are bit for bit
transformers' (in fp32 and bf16; tested): a model trained with the patch runs the same in
the stock code, quantized bases included, whose rounding of activations can amplify a
one-ulp difference.

What: ``apply(model)`` swaps the ``forward`` of each attention *instance* whose class is
in ``ATTENTION_CLASSES``: classes whose forward and ``apply_rotary_pos_emb`` are, in the
gated transformers versions, Llama's line for line (a test checks the source). The new
forward is the same code with the rotation swapped, and with the query, key and value
projections taken together when they are fused LoRA layers (``lora_siblings``); a call
with a KV cache (generation) runs the stock forward. Nothing global changes. Version-gated on transformers.
"""

import sys

import torch
import transformers
from packaging.version import Version
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tunery.model.patches import lora_siblings
from tunery.model.patches.instances import in_range, swap_forward

NAME = "rotary"
SUPPORTED = (Version("5.0.0"), Version("6.0.0"))
ATTENTION_CLASSES = frozenset({"LlamaAttention", "GraniteAttention", "GemmaAttention", "ArceeAttention"})


def rotate(x: torch.Tensor, cos: torch.Tensor, sin_first: torch.Tensor, sin_second: torch.Tensor,
           sign: float) -> torch.Tensor:
    """``[x₁ cos₁ + sign x₂ s₁,  x₂ cos₂ - sign x₁ s₂]`` into a new contiguous tensor.

    With ``(s₁, s₂)`` the halves of ``sin`` and ``sign = -1`` this is the rotation; with the
    halves swapped and ``sign = 1`` it is its transpose (the backward).
    """
    half = x.shape[-1] // 2
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, cos.dtype), device=x.device)
    first, second = x[..., :half], x[..., half:]
    out_first, out_second = out[..., :half], out[..., half:]
    # products rounded one by one, then summed, as transformers' code rounds them (an
    # addcmul could fuse them): the result is bit for bit transformers'
    torch.mul(first, cos[..., :half], out=out_first).add_(second * sin_first, alpha=sign)
    torch.mul(second, cos[..., half:], out=out_second).add_(first * sin_second, alpha=-sign)
    return out


def halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = t.shape[-1] // 2
    return t[..., :half], t[..., half:]


class RotaryFunction(torch.autograd.Function):
    """``x * cos + rotate_half(x) * sin`` (transformers' ``apply_rotary_pos_emb`` for one tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.x_dtype = x.dtype
        sin_first, sin_second = halves(sin)
        return rotate(x, cos, sin_first, sin_second, sign=-1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        sin_first, sin_second = halves(sin)
        return rotate(grad, cos, sin_second, sin_first, sign=1.0).to(ctx.x_dtype), None, None


def fused_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    """Llama's attention forward with ``RotaryFunction`` in place of ``apply_rotary_pos_emb`` (and
    the q/k/v projections through ``lora_siblings.project``)."""
    if cache is not None or kwargs.get("past_key_values") is not None or position_embeddings is None:
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask, cache, **kwargs)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    projections = lora_siblings.project((self.q_proj, self.k_proj, self.v_proj), hidden_states)
    query, key, value = (part.view(hidden_shape).transpose(1, 2) for part in projections)
    cos, sin = (part.unsqueeze(1) for part in position_embeddings)
    query, key = RotaryFunction.apply(query, cos, sin), RotaryFunction.apply(key, cos, sin)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention(self))
    output, weights = attention(
        self, query, key, value, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs,
    )
    output = output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(output), weights


def eager_attention(module: torch.nn.Module):
    """The eager attention function of ``module``'s own modeling file (the stock fallback)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def supported(version: str = transformers.__version__) -> bool:
    return in_range(version, SUPPORTED)


def apply(model: torch.nn.Module) -> int:
    """Fuse the rotary embedding of every matching attention layer; returns how many were patched."""
    if not supported():
        return 0
    return swap_forward(model, lambda module: type(module).__name__ in ATTENTION_CLASSES, fused_forward)
