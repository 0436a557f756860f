"""Memory savers of the loop: token-capped forward passes and bf16 autocast with fp32 LoRA weights."""

import os

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from train_helpers import build_loop, make_config, make_rows

from tunery.train import memory
from tunery.train.memory import checkpoint_interval, cpu_autocast, forward_token_cap


def first_step_grads(tmp_path, name: str, rows, **keys) -> tuple[dict[str, torch.Tensor], float]:
    config = make_config(tmp_path / name, finetuning_type="full", per_device_train_batch_size=8, **keys)
    loop = build_loop(config, rows)
    window = next(loop.iterate_windows(0, 0))
    _, _, loss = loop.accumulate(window)
    grads = {n: p.grad.clone() for n, p in loop.model.named_parameters() if p.grad is not None}
    return grads, float(loss)


def test_capped_forward_passes_give_the_uncapped_gradients(tmp_path):
    rows = make_rows(8, seed=3)  # 4-12 tokens each: a cap of 16 makes several passes
    whole, loss_whole = first_step_grads(tmp_path, "whole", rows, max_tokens_per_forward=0)
    capped, loss_capped = first_step_grads(tmp_path, "capped", rows, max_tokens_per_forward=16)
    assert whole and set(capped) == set(whole)
    assert abs(loss_capped - loss_whole) < 1e-5
    for name, grad in whole.items():
        assert grad.abs().sum() > 0
        torch.testing.assert_close(capped[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_examples_longer_than_the_cap_recompute_their_activations_with_the_same_gradients(tmp_path):
    rows = make_rows(8, seed=3)
    cap = 8
    oversized = sum(len(row["input_ids"]) > cap for row in rows)
    assert 0 < oversized < len(rows)
    whole, loss_whole = first_step_grads(tmp_path, "whole", rows, max_tokens_per_forward=0)

    config = make_config(tmp_path / "capped", finetuning_type="full", per_device_train_batch_size=8,
                         max_tokens_per_forward=cap)
    loop = build_loop(config, rows)
    first_layer = loop.model.model.layers[0]
    calls = []
    first_layer.register_forward_hook(lambda layer, args, output: calls.append(layer.gradient_checkpointing))
    _, _, loss = loop.accumulate(next(loop.iterate_windows(0, 0)))
    # one pass per longer example, run with checkpointing; the others (<= 8 tokens) without
    passes = len(loop.stage.split(loop.stage.collate(rows), cap))
    assert len(calls) == passes
    assert calls.count(True) == oversized
    assert not first_layer.gradient_checkpointing  # switched off again after those passes
    assert abs(float(loss) - loss_whole) < 1e-5
    for name, grad in whole.items():
        torch.testing.assert_close(loop.model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-5, msg=name)


def test_models_that_cannot_checkpoint_run_long_examples_whole(tmp_path):
    config = make_config(tmp_path, finetuning_type="full", per_device_train_batch_size=8,
                         max_tokens_per_forward=8)
    loop = build_loop(config, make_rows(8, seed=3))
    loop.model.supports_gradient_checkpointing = False  # as some remote-code models declare
    calls = []
    loop.model.model.layers[0].register_forward_hook(lambda layer, args, output: calls.append(
        layer.gradient_checkpointing))
    loop.accumulate(next(loop.iterate_windows(0, 0)))
    assert calls and not any(calls)


def test_checkpoint_interval_keeps_about_a_capped_pass_worth_of_layers():
    assert checkpoint_interval(1000, 512) == 2  # keep half the layers' activations: ~500 tokens' worth
    assert checkpoint_interval(600, 512) == 6  # recompute one layer in six
    assert checkpoint_interval(1024, 512) == 2
    assert checkpoint_interval(1100, 512) == 1  # over twice the cap: every layer
    assert checkpoint_interval(5000, 512) == 1


def test_forward_cap_defaults_to_512_fp32_or_1024_bf16_tokens_on_cpu_and_none_elsewhere(tmp_path):
    args = make_config(tmp_path).training
    assert forward_token_cap(args, torch.device("cpu")) == 512
    assert forward_token_cap(args, torch.device("cuda")) == 0
    bf16 = make_config(tmp_path, bf16=True).training
    assert forward_token_cap(bf16, torch.device("cpu")) == 1024  # half the bytes per activation
    assert forward_token_cap(bf16, torch.device("cuda")) == 0
    assert forward_token_cap(args, torch.device("cpu"), paired=True) == 1024  # pairs cannot be split
    assert forward_token_cap(bf16, torch.device("cpu"), paired=True) == 2048
    assert forward_token_cap(bf16, torch.device("cuda"), paired=True) == 0
    args = make_config(tmp_path, max_tokens_per_forward=0).training
    assert forward_token_cap(args, torch.device("cpu")) == 0
    assert forward_token_cap(args, torch.device("cpu"), paired=True) == 0


def test_only_the_pair_stages_double_the_cap():
    from tunery.train.stages import STAGES

    paired = {name for name in STAGES.names() if STAGES.get(name).paired_passes}
    assert paired == {"rm", "dpo", "kto"}


def test_bf16_on_cpu_autocasts_and_keeps_lora_weights_fp32(tmp_path):
    config = make_config(tmp_path / "bf16", bf16=True, max_steps=2, per_device_train_batch_size=4)
    loop = build_loop(config, make_rows(8, seed=4))
    seen = []

    def record(module, args):
        seen.append((module.cast_input_dtype_enabled, torch.is_autocast_enabled("cpu")))

    layers = [m for m in loop.model.modules() if isinstance(m, BaseTunerLayer)]
    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    metrics = loop.train()
    for hook in hooks:
        hook.remove()
    # During training PEFT leaves inputs alone (autocast runs the LoRA matmuls); afterwards the
    # model is as it was, for saving and inference.
    assert seen and all(enabled is False and autocast for enabled, autocast in seen)
    assert all(layer.cast_input_dtype_enabled for layer in layers)
    trainable = [p for p in loop.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_cpu_autocast_only_for_bf16_on_cpu():
    with cpu_autocast(torch.device("cpu"), bf16=True):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with cpu_autocast(torch.device("cpu"), bf16=False):
        assert not torch.is_autocast_enabled("cpu")
    with cpu_autocast(torch.device("cuda"), bf16=True):
        assert not torch.is_autocast_enabled("cpu")


def test_release_free_memory_returns_freed_heap_pages():
    if memory.LIBC is None:  # not glibc: nothing to trim, and the call must be a no-op
        memory.release_free_memory(torch.device("cpu"))
        return
    # Many 64 KB blocks come from the heap (below glibc's mmap threshold); freeing them leaves
    # the pages resident until trimmed.
    blocks = [torch.ones(16 * 1024) for _ in range(4000)]
    before = memory.resident_bytes()
    del blocks
    memory.release_free_memory(torch.device("cpu"))
    assert memory.resident_bytes() < before - 100 * 2**20


class CountingLibc:
    def __init__(self):
        self.trims = 0

    def malloc_trim(self, pad):
        self.trims += 1


def test_heap_releaser_trims_after_a_pass_that_raised_the_peak_or_after_every_pass(monkeypatch):
    libc = CountingLibc()
    monkeypatch.setattr(memory, "LIBC", libc)
    peaks = iter([100, 200, 200, 200, 300, 300])
    monkeypatch.setattr(memory, "peak_resident_bytes", lambda: next(peaks))
    releaser = memory.HeapReleaser(torch.device("cpu"), "on_new_peak")
    trims_after_each_pass = []
    for _ in range(6):
        releaser.after_pass()
        trims_after_each_pass.append(libc.trims)
    assert trims_after_each_pass == [1, 2, 2, 2, 3, 3]  # the first pass, 100 -> 200, 200 -> 300

    every = memory.HeapReleaser(torch.device("cpu"), "every_pass")
    monkeypatch.setattr(memory, "peak_resident_bytes", lambda: 300)
    for _ in range(4):
        every.after_pass()
    assert libc.trims == 3 + 4


def test_heap_releaser_auto_policy_is_on_new_peak_only_in_fp32():
    cpu = torch.device("cpu")
    assert not memory.HeapReleaser(cpu, "auto", half_precision=False).every_pass
    assert memory.HeapReleaser(cpu, "auto", half_precision=True).every_pass
    assert not memory.HeapReleaser(cpu, "on_new_peak", half_precision=True).every_pass
    assert memory.HeapReleaser(cpu, "every_pass", half_precision=False).every_pass


def test_heap_releaser_does_nothing_off_the_cpu(monkeypatch):
    libc = CountingLibc()
    monkeypatch.setattr(memory, "LIBC", libc)
    releaser = memory.HeapReleaser(torch.device("meta"), "every_pass")
    releaser.after_pass()
    assert libc.trims == 0


def test_onednn_cache_is_bounded_unless_the_user_chose_a_size(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    memory.bound_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == memory.ONEDNN_CACHE_CAPACITY
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    memory.bound_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
