"""Stage ``pt``: continued pre-training on raw text (next-token prediction on every token).

Rows are chunked text (labels = input_ids, possibly packed with ``seq_lens``).
Batches are flattened into one row with per-example attention, so no compute
is spent on padding; the loss is computed only at label positions.
"""

from collections.abc import Sequence

import torch

from tunery.train.stages import STAGES, Stage


class CausalLMStage(Stage):
    """Next-token prediction on the label tokens of flattened batches (pt and sft)."""

    flat_batches = True

    def collate(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        # imported here: the collate module is owned by the data/speed layer and
        # importing it lazily keeps `import tunery.train` light
        from tunery.data.collate import collate_flat

        return collate_flat(list(rows))

    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        from tunery.losses.lm import causal_lm_loss

        return causal_lm_loss(model, batch)


@STAGES.register("pt")
class PretrainStage(CausalLMStage):
    name = "pt"
