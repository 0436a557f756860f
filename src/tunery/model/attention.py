"""Per-example ("varlen") attention for flattened and packed batches.

Padding-free training puts every example of a batch into ONE row (see
``tunery.data.collate.collate_flat``). Plain SDPA would then let each example
attend to the ones before it, and transformers' own fix for packed rows builds a
dense ``T x T`` block-diagonal mask whose cost grows with the square of the row
length. This module registers an attention function with transformers'
``AttentionInterface`` that cuts the row at the example boundaries and runs
causal SDPA on each example alone: no mask is ever materialised and no work is
spent on pairs of tokens from different examples.

Boundaries come from the ``cu_seq_lens_q``/``cu_seq_lens_k`` keyword arguments
(the same ones FlashAttention-2 uses) or, failing that, from the points where
``position_ids`` restart. A matching mask function is registered with
``AttentionMaskInterface`` so transformers skips building a 4-D mask when the
batch is flat; with padding or a KV cache (generation) it hands back the usual
SDPA mask and the attention falls back to transformers' SDPA.
"""

import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tunery.errors import ModelError

ATTENTION_NAME = "tunery_varlen"
# PyTorch's CPU flash attention runs its bf16 backward 2-3x slower than its fp32 one on
# short sequences (measured, 9 query / 3 KV heads of 64: 128 tokens 2.0 vs 0.95 ms, 64
# tokens 0.95 vs 0.35 ms forward + backward); from ~300 tokens they are even. Short
# examples are therefore attended in fp32 (exact softmax either way; the copies are small).
CPU_BF16_UPCAST_MAX_TOKENS = 256

Segment = tuple[int, int, int]  # (row, start, end) of one example inside the batch


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention inside each example; query/key/value are ``[batch, heads, seq, head_dim]``.

    Returns ``[batch, seq, heads, head_dim]`` like every transformers attention function.
    """
    if kwargs.get("s_aux") is not None:
        raise ModelError(
            f"Attention '{ATTENTION_NAME}' does not support attention sinks; "
            "set flash_attn: eager for this model."
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if kwargs.get("pair_layout") is not None and attention_mask is None:
        return shared_prefix_attention(query, key, value, kwargs["pair_layout"], dropout, scaling), None
    segments = find_segments(query, key, attention_mask, kwargs)
    if segments is None or not causal:
        if softcap is not None:
            raise ModelError(
                f"Attention '{ATTENTION_NAME}' needs flat batches for softcapped attention; "
                "set flash_attn: eager for this model."
            )
        return sdpa_attention_forward(
            module, query, key, value, attention_mask,
            dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
        )
    rows = []
    for row, lengths in enumerate(lengths_per_row(segments, query.shape[0])):
        examples = zip(*(split_row(t, row, lengths) for t in (query, key, value)), strict=True)
        rows.append(torch.cat([attend_one(q, k, v, dropout, scaling, sliding_window, softcap)
                               for q, k, v in examples], dim=2))
    # Segments tile each row in order, so concatenating along the sequence rebuilds the rows.
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


def lengths_per_row(segments: list[Segment], num_rows: int) -> list[list[int]]:
    """The example lengths of each row, in order (segments tile their rows in order)."""
    lengths: list[list[int]] = [[] for _ in range(num_rows)]
    for row, start, end in segments:
        lengths[row].append(end - start)
    return lengths


def split_row(tensor: torch.Tensor, row: int, lengths: list[int]) -> tuple[torch.Tensor, ...]:
    """Row ``row`` of ``[batch, heads, seq, dim]`` cut into its examples along the sequence.

    One ``split`` rather than a slice per example: in backward, a split is one ``cat`` of the
    examples' gradients, where each slice would give a zero-filled full-row gradient to add up.
    """
    whole = tensor if tensor.shape[0] == 1 else tensor[row : row + 1]
    return whole.split(lengths, dim=2)


def shared_prefix_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: torch.Tensor,
    dropout: float, scaling: float | None,
) -> torch.Tensor:
    """Attention over ``[prompt | first | second]`` segments (``tunery.data.shared_prefix``).

    ``layout`` holds (prompt, first, second) lengths per segment. Prompt and first answer are
    one causal sequence; the second answer attends to the prompt and, causally, to itself.
    Returns ``[1, seq, heads, head_dim]``.
    """
    gqa = key.shape[1] != query.shape[1]
    parts, start = [], 0
    for prompt, first, second in layout.tolist():
        lead = slice(start, start + prompt + first)
        parts.append(causal_sdpa(query[:, :, lead], key[:, :, lead], value[:, :, lead], dropout, scaling))
        tail = slice(start + prompt + first, start + prompt + first + second)
        keys = torch.cat([key[:, :, start : start + prompt], key[:, :, tail]], dim=2)
        values = torch.cat([value[:, :, start : start + prompt], value[:, :, tail]], dim=2)
        # Bottom-right aligned causal mask: answer token i sees the whole prompt and answer[: i + 1].
        allowed = torch.ones(second, prompt + second, dtype=torch.bool, device=query.device).tril(prompt)
        parts.append(F.scaled_dot_product_attention(
            query[:, :, tail], keys, values, attn_mask=allowed, dropout_p=dropout, scale=scaling,
            enable_gqa=gqa))
        start = tail.stop
    if start != query.shape[2]:
        raise ModelError(f"pair_layout covers {start} tokens but the row has {query.shape[2]}; "
                         "build pair batches with tunery.data.shared_prefix.collate_shared_pairs.")
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


def attend_one(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout: float,
    scaling: float | None,
    sliding_window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Causal attention over one example (``[1, heads, len, dim]``), with GQA done by SDPA itself."""
    length = q.shape[2]
    gqa = k.shape[1] != q.shape[1]
    windowed = sliding_window is not None and length > sliding_window
    if softcap is None and not windowed:
        return causal_sdpa(q, k, v, dropout, scaling)
    # Rare paths (sliding window shorter than the example, logit softcapping): an explicit
    # mask for this one example only, never for the whole flattened row.
    idx = torch.arange(length, device=q.device)
    allowed = idx[:, None] >= idx[None, :]
    if windowed:
        allowed &= (idx[:, None] - idx[None, :]) < sliding_window
    if softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling, enable_gqa=gqa
        )
    if gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.float().softmax(-1).to(q.dtype), p=dropout, training=dropout > 0)
    return probs @ v


def causal_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, scaling: float | None
) -> torch.Tensor:
    """Causal SDPA over one sequence (GQA by SDPA itself), in fp32 where that is faster."""
    gqa = k.shape[1] != q.shape[1]
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    bf16 = q.dtype == torch.bfloat16 or autocast_bf16
    if q.device.type != "cpu" or not bf16 or q.shape[2] > CPU_BF16_UPCAST_MAX_TOKENS:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa
        )
    with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa
        )
    return out.to(torch.bfloat16)


def find_segments(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict
) -> list[Segment] | None:
    """Example boundaries of a flat batch, or None when the batch is an ordinary one.

    Ordinary means a padding/cache mask is present or query and key lengths differ
    (generation): those go to transformers' SDPA unchanged.
    """
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        return None
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is not None and query.shape[0] == 1:
        bounds = [int(x) for x in cu_seq_lens.tolist()]
        if bounds[-1] != query.shape[2]:
            raise ModelError(
                f"cu_seq_lens_q ends at {bounds[-1]} but the row has {query.shape[2]} tokens; "
                "build flat batches with tunery.data.collate.collate_flat."
            )
        return [(0, s, e) for s, e in itertools.pairwise(bounds) if e > s]
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return None
    return segments_from_positions(position_ids.expand(query.shape[0], -1))


def segments_from_positions(position_ids: torch.Tensor) -> list[Segment] | None:
    """Cut each row where its position ids restart (any step other than +1)."""
    steps = torch.diff(position_ids, dim=-1) != 1
    if not bool(steps.any()):
        return None  # one example per row: plain causal SDPA is already right
    segments: list[Segment] = []
    length = position_ids.shape[1]
    for row, row_steps in enumerate(steps):
        cuts = [0, *(torch.nonzero(row_steps).flatten() + 1).tolist(), length]
        segments.extend((row, s, e) for s, e in itertools.pairwise(cuts))
    return segments


def varlen_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask builder paired with the attention: nothing for flat batches, SDPA's mask otherwise."""
    if attention_mask is None and q_length == kv_length and kv_offset == 0:
        return None
    return sdpa_mask(
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
        kv_offset=kv_offset, attention_mask=attention_mask, **kwargs,
    )


def register() -> None:
    """Make ``ATTENTION_NAME`` known to transformers (idempotent; runs on import)."""
    AttentionInterface.register(ATTENTION_NAME, varlen_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, varlen_mask)


def supports_varlen(model: torch.nn.Module) -> bool:
    """Whether the model computes attention through transformers' AttentionInterface.

    Architectures that compute it themselves (BLOOM, most remote-code models) would
    ignore the per-example attention and let the examples of a flat batch — and
    future tokens — see each other, silently.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return isinstance(base, PreTrainedModel) and base.is_backend_compatible()


def enable_varlen_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a loaded transformers (or PEFT-wrapped) model to per-example attention."""
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not supports_varlen(base):
        raise ModelError(
            f"{type(base).__name__} computes attention outside transformers' attention interface, "
            "so examples cannot share a row; train it with padded batches."
        )
    base.set_attn_implementation(ATTENTION_NAME)
    return model


register()
