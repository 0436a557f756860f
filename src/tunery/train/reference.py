"""The reference model's log-probabilities for DPO/KTO rows, computed once before training.

With LoRA (and no ``ref_model``) the reference is the policy itself with its
adapter switched off: no second copy in memory. Otherwise a reference model is
loaded for this one pass — ``ref_model`` (+ ``ref_model_adapters``), or the
model the run starts from — and freed afterwards. Caching the values with the
rows means they are never recomputed, whatever the number of epochs.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from tqdm import tqdm

from tunery.train.memory import release_free_memory


@contextmanager
def reference_model(loop: Any) -> Iterator[torch.nn.Module]:
    """The reference model, in eval mode, for the duration of the block."""
    config = loop.config
    policy = loop.accelerator.unwrap_model(loop.model)
    if config.finetuning.finetuning_type == "lora" and not config.finetuning.ref_model:
        was_training = policy.training
        policy.eval()  # no dropout in the reference
        try:
            with policy.disable_adapter():
                yield policy
        finally:
            policy.train(was_training)
        return
    model = load_reference(loop)
    try:
        yield model
    finally:
        del model
        release_free_memory(loop.accelerator.device)


def load_reference(loop: Any) -> torch.nn.Module:
    from tunery.model.attention import enable_varlen_attention
    from tunery.model.load import load_model

    config, finetuning = loop.config, loop.config.finetuning
    model_args = config.model
    if finetuning.ref_model:
        model_args = model_args.model_copy(update={"model_name_or_path": finetuning.ref_model,
                                                   "adapter_name_or_path": finetuning.ref_model_adapters})
    reference_config = config.model_copy(update={"model": model_args})
    reference = load_model(reference_config, loop.tokenizer, for_training=False)
    if loop.stage.flat_batches:
        enable_varlen_attention(reference)
    return reference.to(loop.accelerator.device)


@torch.no_grad()
def reference_logps(stage: Any, loop: Any, rows: Any) -> list[list[float]]:
    """``[first, second]`` reference log-probs for every row, in row order."""
    size = loop.args.per_device_eval_batch_size
    values: list[list[float]] = []
    with reference_model(loop) as model, loop.accelerator.autocast(), loop.cpu_autocast():
        for start in tqdm(range(0, len(rows), size), desc="Reference log-probs", unit="batch"):
            indices = range(start, min(start + size, len(rows)))
            batch = stage.collate([rows[i] for i in indices])
            for piece in stage.split(batch, loop.max_tokens_per_forward):  # the same memory cap as training
                first, second, _ = stage.pair_logps(model, loop.to_device(piece), stage.averaged_logps)
                values.extend([float(a), float(b)] for a, b in zip(first, second, strict=True))
    return values
