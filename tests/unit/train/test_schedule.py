"""Optimizer groups and learning-rate schedules."""

import pytest
import torch
from train_helpers import make_config, tiny_model

from tunery.model.adapters import apply_finetuning
from tunery.train.schedule import count_warmup_steps, create_optimizer, create_scheduler


def test_warmup_steps_override_warmup_ratio(tmp_path):
    assert count_warmup_steps(make_config(tmp_path, warmup_ratio=0.1).training, 95) == 10
    assert count_warmup_steps(make_config(tmp_path, warmup_ratio=0.1, warmup_steps=3).training, 95) == 3


def test_linear_schedule_warms_up_then_decays_to_zero(tmp_path):
    config = make_config(tmp_path, learning_rate=1e-2, warmup_steps=2, finetuning_type="full")
    optimizer = create_optimizer(tiny_model(), config)
    scheduler = create_scheduler(optimizer, config.training, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.0, 5e-3, 1e-2, 7.5e-3, 5e-3, 2.5e-3])


def test_loraplus_gives_b_matrices_a_larger_learning_rate(tmp_path):
    config = make_config(tmp_path, learning_rate=1e-3, loraplus_lr_ratio=16, weight_decay=0.1,
                         adam_beta2=0.95)
    model = apply_finetuning(tiny_model(), config.finetuning)
    optimizer = create_optimizer(model, config)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["lora_a"] == 1e-3 and lrs["lora_b"] == pytest.approx(1.6e-2)
    assert all(group["betas"] == (0.9, 0.95) for group in optimizer.param_groups)
    trained = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("optim", "fused"), [(None, True), ("adamw_torch_fused", True),
                                              ("adamw_torch", False), ("adamw_hf", False)])
def test_adamw_is_fused_by_default_like_transformers_and_steps_the_same(tmp_path, optim, fused):
    options = {"optim": optim} if optim else {}
    config = make_config(tmp_path, learning_rate=1e-2, finetuning_type="full", **options)
    model = tiny_model()
    optimizer = create_optimizer(model, config)
    assert bool(optimizer.defaults["fused"]) is fused
    reference_model = tiny_model()
    reference = create_optimizer(reference_model, make_config(tmp_path, learning_rate=1e-2,
                                                             finetuning_type="full", optim="adamw_torch"))
    for step_model, step_optimizer in ((model, optimizer), (reference_model, reference)):
        for param in step_model.parameters():
            param.grad = torch.ones_like(param)
        step_optimizer.step()
    for param, expected in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(param, expected)
