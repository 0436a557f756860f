"""LongLoRA shift short attention (S²-Attn) for LLaMA-family models, during training only.

Why: LongLoRA (Chen et al., 2023) fine-tunes a model for a longer context at a
fraction of full attention's cost by attending only inside groups of tokens
while training; shifting half of the heads by half a group lets information flow
between neighbouring groups. The model keeps full attention for evaluation and
generation, so it needs no change at inference time.

What (as the paper's Algorithm 1 and LLaMA-Factory's llama patch):

- the sequence of ``L`` tokens is split into 4 groups of ``g = L // 4`` tokens
  (LLaMA-Factory's ``group_size_ratio = 1/4``);
- the first ``H // 2`` query heads attend causally inside their group;
- the other heads are shifted by ``g // 2`` tokens (``roll(-g/2)``), attend
  causally inside the shifted groups, and are shifted back.

Two details differ from a literal ``roll``, both on purpose:

- *Wrap-around.* Rolling moves the first ``g/2`` tokens behind the last ``g/2``
  in the shifted heads' last group, where the paper's causal mask lets them
  attend to those *later* tokens: a leak of the future that full attention at
  inference never reproduces. Masks here also forbid keys that come later in the
  text, so the wrapped tokens attend only among themselves. Every other token
  attends exactly as in the paper.
- *Lengths.* The sequence must split into 4 groups of an even size.
  LLaMA-Factory pads training batches to a multiple of 8 and asserts in the
  attention; here the attention itself pads queries, keys and values with
  masked positions up to a multiple of 8 and drops them afterwards, which gives
  the same groups without touching any collator.

Padding masks from transformers (``sdpa_mask``, registered with this attention's
name) are honoured group by group, which LLaMA-Factory's patch does not (it reuses
the first group's mask for every group).

How it is wired: ``enable(model)`` registers ``shift_attention_forward`` with
transformers' ``AttentionInterface`` and switches the loaded model to it; modules
that are not training, KV-cache steps and cross-length calls go to transformers'
SDPA unchanged. ``tunery.train.run.choose_batching`` calls ``enable`` and keeps
batches padded, since a flat batch's row holds several examples whose groups
would mix. Version-gated to transformers 5.x, whose attention functions take
``(module, query, key, value, attention_mask, dropout, scaling, **kwargs)``.
"""

import math

import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tunery.errors import ConfigError, ModelError

NAME = "shift_attn"
ATTENTION_NAME = "tunery_shift_short"
SUPPORTED = (Version("5.0.0"), Version("6.0.0"))
# Model types whose attention is LLaMA's (q/k/v heads, RoPE before the attention function,
# causal, no softcap or sinks) and goes through AttentionInterface.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
NUM_GROUPS = 4  # LLaMA-Factory's group_size_ratio = 1/4
PAD_MULTIPLE = 2 * NUM_GROUPS  # groups of an even size, so half a group is a whole number of tokens


def supported(version: str = transformers.__version__) -> bool:
    low, high = SUPPORTED
    return low <= Version(version) < high


# ---------------------------------------------------------------- the attention


def group_positions(length: int, group_size: int, offset: int, device: torch.device) -> torch.Tensor:
    """``[groups, group_size]`` original positions of each group, the groups starting at ``offset``."""
    starts = torch.arange(0, length, group_size, device=device)[:, None] + offset
    return (starts + torch.arange(group_size, device=device)[None, :]) % length


def group_masks(
    positions: torch.Tensor,
    valid_length: int,
    attention_mask: torch.Tensor | None,
    sliding_window: int | None,
) -> torch.Tensor:
    """Boolean ``[batch or 1, groups, 1, g, g]`` masks: who may attend to whom inside each group.

    A transformers mask (padding, sliding window) is gathered block by block.
    """
    query_pos, key_pos = positions[:, :, None], positions[:, None, :]
    size = positions.shape[1]
    in_group_order = torch.ones(size, size, dtype=torch.bool, device=positions.device).tril()
    # The paper's causal mask over the (shifted) group, and never a token later in the text:
    # the two agree except in the wrapped group, where the second one removes the leak.
    allowed = in_group_order & (key_pos <= query_pos) & (key_pos < valid_length)
    if sliding_window is not None:
        allowed &= (query_pos - key_pos) < sliding_window
    allowed = allowed[None]
    if attention_mask is not None:
        given = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        clamped = positions.clamp(max=valid_length - 1)
        allowed = allowed & given[:, 0][:, clamped[:, :, None], clamped[:, None, :]]
    # Every token may see itself, so rows of padding (masked everywhere) stay finite
    # instead of becoming NaN, which the next layer would multiply into real tokens.
    allowed = allowed | torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device)
    return allowed[:, :, None]


def attend_in_groups(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of ``[B, h, L, D]`` tensors inside the groups named by ``positions`` (``[G, g]``).

    Returns ``[B, h, L, D]`` in the original token order.
    """
    batch, heads, _, dim = query.shape
    groups, size = positions.shape
    flat = positions.reshape(-1)

    def gather(states: torch.Tensor) -> torch.Tensor:  # -> [B, G, h, g, D]
        return states[:, :, flat].view(batch, heads, groups, size, dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        gather(query), gather(key), gather(value), attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    in_group_order = out.transpose(1, 2).reshape(batch, heads, groups * size, dim)
    return in_group_order[:, :, torch.argsort(flat)]  # `flat` is a permutation: undo it


def shift_short_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    shift: bool = True,
) -> torch.Tensor:
    """S²-Attn on ``[B, H, L, D]`` query and ``[B, H_kv, L, D]`` key/value; returns ``[B, H, L, D]``.

    ``shift=False`` gives plain short (grouped) attention in every head.
    """
    length = query.shape[2]
    if key.shape[1] != query.shape[1]:  # GQA: the shifted half of the query heads need their own kv
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    padded = math.ceil(length / PAD_MULTIPLE) * PAD_MULTIPLE
    if padded != length:
        pad = (0, 0, 0, padded - length)
        query, key, value = F.pad(query, pad), F.pad(key, pad), F.pad(value, pad)
    group_size = padded // NUM_GROUPS
    half = query.shape[1] // 2 if shift else query.shape[1]
    outputs = []
    for heads, offset in ((slice(0, half), 0), (slice(half, None), group_size // 2)):
        if heads.start == query.shape[1]:
            continue
        positions = group_positions(padded, group_size, offset, query.device)
        mask = group_masks(positions, length, attention_mask, sliding_window)
        outputs.append(attend_in_groups(
            query[:, heads], key[:, heads], value[:, heads], positions, mask, dropout, scaling
        ))
    return torch.cat(outputs, dim=1)[:, :, :length]


def shift_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: S²-Attn while training, SDPA (full attention) otherwise."""
    if not module.training or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask,
            dropout=dropout, scaling=scaling, sliding_window=sliding_window, softcap=softcap, **kwargs,
        )
    if softcap is not None or kwargs.get("s_aux") is not None:
        raise ModelError("shift_attn does not support softcapped attention or attention sinks.")
    if attention_mask is not None and attention_mask.shape[-1] != key.shape[2]:
        raise ModelError(
            f"shift_attn got an attention mask over {attention_mask.shape[-1]} keys for "
            f"{key.shape[2]} tokens; train with padded batches (not flat ones)."
        )
    out = shift_short_attention(query, key, value, attention_mask, dropout, scaling, sliding_window)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``ATTENTION_NAME`` known to transformers (idempotent); masks are SDPA's."""
    AttentionInterface.register(ATTENTION_NAME, shift_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


# ---------------------------------------------------------------- switching a model over


def check_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under ``model`` (PEFT-wrapped or not), if shift_attn can run on it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not isinstance(base, PreTrainedModel):
        raise ConfigError(
            f"shift_attn (LongLoRA) supports LLaMA-family models "
            f"({', '.join(sorted(SUPPORTED_MODEL_TYPES))}); this model is '{model_type}'. "
            "Remove `shift_attn: true`."
        )
    if not supported():
        low, high = SUPPORTED
        raise ModelError(
            f"shift_attn is written for transformers >={low},<{high}; this is {transformers.__version__}. "
            "Install a supported transformers or remove `shift_attn: true`."
        )
    return base


def enable(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a loaded model to shift short attention (active only while it trains)."""
    base = check_model(model)
    register()
    base.set_attn_implementation(ATTENTION_NAME)
    return model
