"""Per-example log-probabilities of the label tokens, from the hidden states of a (flat) batch.

Preference stages need, for every example of a batch, the summed log-probability
of its answer tokens (and how many there are). As in ``losses.lm``, the decoder
runs once and the output head only ever sees label positions, a chunk of rows at
a time, so the full ``tokens x vocab`` logits never exist: a frozen linear head
works out each chunk's input gradient on the spot (``losses.lm.LinearTokenLogps``),
any other head is recomputed under activation checkpointing. Examples are the
segments of a flat row (``cu_seq_lens_q``) or the rows of a padded batch.
"""

import torch
from torch.utils.checkpoint import checkpoint

from tunery.labels import IGNORE_INDEX
from tunery.losses.lm import DEFAULT_CHUNK_SIZE, LinearTokenLogps, LogitTransform

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask", "cu_seq_lens_q", "cu_seq_lens_k",
                "max_length_q", "max_length_k", "pair_layout")


def final_hidden_states(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The decoder's last hidden states ``(rows, T, H)`` for the model inputs of ``batch``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    return base.get_decoder()(**inputs, use_cache=False).last_hidden_state


def example_ids(batch: dict, rows: int, width: int) -> torch.Tensor:
    """For every position ``(row, t)``, the index of the example it belongs to."""
    if "cu_seq_lens_q" in batch:  # flat: one row, examples are consecutive segments
        bounds = batch["cu_seq_lens_q"].to(torch.long)
        positions = torch.arange(width, device=bounds.device)
        return torch.searchsorted(bounds[1:], positions, right=True).unsqueeze(0)
    return torch.arange(rows).unsqueeze(1).expand(rows, width)


def label_positions(batch: dict, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(predicting hidden states, target ids, owning example) of every label token.

    A shared-prefix pair batch names them explicitly (``logp_index`` ...); otherwise the
    state at t predicts the label at t + 1 and the example is found from the boundaries.
    """
    if "logp_index" in batch:
        index, targets, owners = (batch[key].to(hidden.device)
                                  for key in ("logp_index", "logp_targets", "logp_owners"))
        return hidden[0, index], targets, owners
    labels = batch["labels"].to(hidden.device)
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    owners = example_ids(batch, *labels.shape).to(hidden.device)[:, :-1][keep]
    return hidden[:, :-1][keep], targets[keep], owners


def count_examples(batch: dict) -> int:
    if "example_count" in batch:
        return int(batch["example_count"])
    if "cu_seq_lens_q" in batch:
        return int(batch["cu_seq_lens_q"].numel() - 1)
    return int(batch["input_ids"].shape[0])


def example_logps(
    model: torch.nn.Module, batch: dict, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(logps (E,), tokens (E,))``: per example, :math:`\sum_t \log p(y_{t+1} \mid y_{\le t})` over
    positions whose shifted label is not -100, and the number of those positions (float32)."""
    hidden = final_hidden_states(model, batch)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    predictors, targets, owners = label_positions(batch, hidden)
    token_logps = head_token_logps(base.get_output_embeddings(), predictors, targets,
                                   LogitTransform.from_config(base.config), chunk_size)
    count = count_examples(batch)
    sums = torch.zeros(count, dtype=torch.float32, device=hidden.device).index_add(0, owners, token_logps)
    tokens = torch.zeros(count, dtype=torch.float32, device=hidden.device).index_add(
        0, owners, torch.ones_like(token_logps))
    return sums, tokens


def head_token_logps(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, transform: LogitTransform,
    chunk_size: int,
) -> torch.Tensor:
    """``log softmax(head(hidden))[target]`` per row, chunk by chunk (float32)."""
    if type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters()):
        # The usual case (a frozen, plain head): gradients are worked out while each chunk's
        # logits exist, so backward needs no second head matmul.
        return LinearTokenLogps.apply(hidden, head.weight, head.bias, targets, transform, chunk_size)
    # Any other head: per chunk under activation checkpointing, one chunk of logits alive.
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        if torch.is_grad_enabled():  # recompute the chunk's logits in backward instead of keeping them
            pieces.append(checkpoint(chunk_token_logps, head, hidden[rows], targets[rows], transform,
                                     use_reentrant=False))
        else:
            pieces.append(chunk_token_logps(head, hidden[rows], targets[rows], transform))
    if not pieces:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def chunk_token_logps(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, transform: LogitTransform
) -> torch.Tensor:
    logits, _ = transform.apply(head(hidden))
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
