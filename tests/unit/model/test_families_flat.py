"""Tunery's own training path on every model family: flat batches must mean what padded ones mean.

A flat batch puts several examples in one row; only attention that goes through
transformers' AttentionInterface can keep them apart. For each family the loss
and gradients of a batch through Tunery's stage (flat where the model allows it,
padded where it does not, e.g. BLOOM) must equal those of the same batch padded
and run with the model's own eager attention — so no example, and no future
token, ever leaks into another.
"""

import pytest
import torch
from test_families import FAMILIES, build

from tunery.config.load import build_config
from tunery.data.collate import collate_padded
from tunery.losses.lm import causal_lm_loss
from tunery.model.adapters import apply_finetuning
from tunery.train.run import choose_batching
from tunery.train.stages import get_stage

ROWS = [  # three examples of different lengths, prompts masked
    {"input_ids": [5, 9, 12, 7, 30, 31], "labels": [-100, -100, -100, 7, 30, 31]},
    {"input_ids": [6, 8, 40, 41], "labels": [-100, -100, 40, 41]},
    {"input_ids": [11, 3, 14, 15, 16, 50, 51, 52], "labels": [-100, -100, -100, -100, 16, 50, 51, 52]},
]
CONFIG = build_config({"dataset": "identity", "lora_rank": 4, "lora_dropout": 0.0})


def loss_and_grads(model, batch, loss=causal_lm_loss):
    model.zero_grad()
    total, tokens = loss(model, batch)
    (total / tokens).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (total / tokens).item(), grads


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tunery_batches_equal_padded_eager_batches(family):
    stage = get_stage("sft", CONFIG)
    model = apply_finetuning(build(family), CONFIG.finetuning)
    choose_batching(CONFIG, model, stage)
    assert stage.flat_batches is (family != "bloom"), "BLOOM computes attention itself: padded batches"
    loss, grads = loss_and_grads(model, stage.collate(ROWS), stage.compute_loss)

    reference = apply_finetuning(build(family), CONFIG.finetuning)
    reference.get_base_model().set_attn_implementation("eager")
    expected_loss, expected_grads = loss_and_grads(reference, collate_padded(ROWS, pad_token_id=0))

    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_an_explicit_kernel_is_honoured_with_padded_batches():
    config = build_config({"dataset": "identity", "flash_attn": "eager"})
    stage = get_stage("sft", config)
    choose_batching(config, build("llama"), stage)
    assert stage.flat_batches is False
    assert "attention_mask" in stage.collate(ROWS)
