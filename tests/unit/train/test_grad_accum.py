"""Gradient accumulation is normalised by the label tokens of the whole optimizer step."""

import torch
import torch.nn.functional as F
from train_helpers import build_loop, make_config, make_rows


def first_step_grads(tmp_path, batch_size: int, accum: int, rows) -> dict[str, torch.Tensor]:
    config = make_config(
        tmp_path / f"b{batch_size}x{accum}", finetuning_type="full",
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=accum,
    )
    loop = build_loop(config, rows)
    loop.session = {"samples": 0, "tokens": 0}
    window = next(loop.iterate_windows(0, 0))
    loop.accumulate(window)
    return {n: p.grad.clone() for n, p in loop.model.named_parameters() if p.grad is not None}


def reference_grads(tmp_path, rows) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over every label token of the 8 rows, each row run on its own."""
    loop = build_loop(make_config(tmp_path / "ref", finetuning_type="full"), rows)
    order = loop.plan.epoch_order(0)[:8]
    total, count = 0.0, 0
    for index in order:
        ids = torch.tensor([rows[index]["input_ids"]])
        labels = torch.tensor([rows[index]["labels"]])
        logits = loop.model(input_ids=ids).logits[0, :-1]
        targets = labels[0, 1:]
        total = total + F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        count += int((targets != -100).sum())
    (total / count).backward()
    return {n: p.grad.clone() for n, p in loop.model.named_parameters() if p.grad is not None}


def test_1x8_8x1_and_2x4_give_the_same_gradients(tmp_path):
    rows = make_rows(8, seed=5)  # lengths differ, so a mean of per-micro-batch means would differ
    grads = {shape: first_step_grads(tmp_path, *shape, rows) for shape in [(8, 1), (1, 8), (2, 4)]}
    reference = reference_grads(tmp_path, rows)
    assert set(grads[(8, 1)]) == set(reference)
    for shape, found in grads.items():
        for name, grad in reference.items():
            torch.testing.assert_close(found[name], grad, atol=2e-6, rtol=1e-4, msg=f"{shape} {name}")


def test_accumulated_step_updates_weights_like_one_big_batch(tmp_path):
    rows = make_rows(8, seed=6)
    states = []
    for batch_size, accum in [(8, 1), (2, 4)]:
        config = make_config(
            tmp_path / f"{batch_size}", finetuning_type="full", max_steps=1,
            per_device_train_batch_size=batch_size, gradient_accumulation_steps=accum,
        )
        loop = build_loop(config, rows)
        metrics = loop.train()
        states.append((metrics["train_loss"], {n: p.detach() for n, p in loop.model.named_parameters()}))
    (loss_a, weights_a), (loss_b, weights_b) = states
    assert abs(loss_a - loss_b) < 1e-5
    for name, value in weights_a.items():
        torch.testing.assert_close(weights_b[name], value, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    rows = make_rows(8, seed=7)
    plain = first_step_grads(tmp_path / "plain", 4, 2, rows)
    config = make_config(tmp_path / "ckpt", finetuning_type="full", per_device_train_batch_size=4,
                         gradient_accumulation_steps=2, gradient_checkpointing=True)
    from train_helpers import build_loop as build

    loop = build(config, rows)
    flag = getattr(loop.model, "is_activation_checkpointing", None)
    assert flag if flag is not None else loop.model.is_gradient_checkpointing
    loop.session = {"samples": 0, "tokens": 0}
    loop.accumulate(next(loop.iterate_windows(0, 0)))
    for name, param in loop.model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], atol=1e-6, rtol=1e-5)
