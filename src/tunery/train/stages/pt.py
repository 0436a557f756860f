"""Stage ``pt``: continued pre-training on raw text (next-token prediction on every token).

Rows are chunked text (labels = input_ids, possibly packed with ``seq_lens``).
Batches are flattened into one row with per-example attention, so no compute
is spent on padding (models whose attention cannot do that get padded batches);
the loss is computed only at label positions.
"""

from collections.abc import Sequence

import torch

from tunery.data.collate import collate_flat, collate_padded
from tunery.losses import LOSSES
from tunery.train.stages import STAGES, Stage


class CausalLMStage(Stage):
    """Next-token prediction on the label tokens of flattened batches (pt and sft)."""

    flat_batches = True  # run.choose_batching turns this off for models that need padding

    def collate(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if self.flat_batches:
            return collate_flat(list(rows))
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        return collate_padded(list(rows), pad_id if pad_id is not None else 0)

    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        return LOSSES.get("causal_lm")(model, batch)


@STAGES.register("pt")
class PretrainStage(CausalLMStage):
    name = "pt"
