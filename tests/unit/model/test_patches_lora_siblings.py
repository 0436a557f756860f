"""Sibling LoRA projections (q/k/v, gate/up) in one node: PEFT's numbers, fewer bytes, PEFT's path
when needed."""

import copy

import pytest
import torch
from test_patches_lora_linear import IDS, TARGETS, assert_close_under_bf16_autocast, loss_and_grads, tiny_lora

from tunery.model.patches import lora_linear, lora_siblings, rotary, swiglu


def fully_patched(model):
    """``model`` with every training patch and the fused LoRA layers, as Tunery trains it (without a KV
    cache: the patched attention leaves calls with one to the stock code)."""
    model.config.use_cache = False
    assert swiglu.apply(model) == 2 and rotary.apply(model) == 2
    assert lora_linear.apply(model) == 2 * len(TARGETS)
    return model


@pytest.fixture
def counted_calls(monkeypatch):
    """How many times the sibling function ran, per number of siblings."""
    calls: dict[int, int] = {}
    apply = lora_siblings.LoraSiblingsFunction.apply

    def counting(x, scalings, *params):
        calls[len(scalings)] = calls.get(len(scalings), 0) + 1
        return apply(x, scalings, *params)

    monkeypatch.setattr(lora_siblings.LoraSiblingsFunction, "apply", counting)
    return calls


def test_siblings_give_peft_loss_and_gradients_in_fp32_and_keep_less(counted_calls):
    stock = tiny_lora()
    separate = copy.deepcopy(stock)
    lora_linear.apply(separate)
    fused = fully_patched(copy.deepcopy(stock))
    loss_stock, grads_stock, _ = loss_and_grads(stock, IDS)
    _, _, saved_separate = loss_and_grads(separate, IDS)
    counted_calls.clear()
    loss_fused, grads_fused, saved_fused = loss_and_grads(fused, IDS)
    assert counted_calls == {3: 2, 2: 2}  # q/k/v and gate/up of both layers
    torch.testing.assert_close(loss_fused, loss_stock, rtol=1e-6, atol=1e-6)
    assert grads_fused.keys() == grads_stock.keys()
    for name, grad in grads_stock.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert saved_fused < saved_separate


def test_siblings_under_bf16_autocast_stay_close_and_keep_fp32_gradients(counted_calls):
    stock = tiny_lora(dtype=torch.bfloat16)
    fused = fully_patched(copy.deepcopy(stock))
    assert_close_under_bf16_autocast(stock, fused)
    assert counted_calls == {3: 2, 2: 2}


def test_function_gradients_match_autograd_in_double_with_biases_and_unequal_ranks():
    torch.manual_seed(0)
    double = dict(dtype=torch.float64)
    x = torch.randn(2, 5, 6, **double, requires_grad=True)
    outs, ranks, scalings = (7, 3, 4), (2, 3, 1), (1.5, 0.5, 2.0)
    weights = tuple(torch.randn(out, 6, **double) for out in outs)
    biases = (torch.randn(7, **double), None, torch.randn(4, **double))
    lora_as = tuple(torch.randn(r, 6, **double, requires_grad=True) for r in ranks)
    lora_bs = tuple(torch.randn(out, r, **double, requires_grad=True)
                    for out, r in zip(outs, ranks, strict=True))

    def siblings(x, *adapters):
        return lora_siblings.LoraSiblingsFunction.apply(x, scalings, *weights, *biases, *adapters)

    assert torch.autograd.gradcheck(siblings, (x, *lora_as, *lora_bs))
    # each output is its own layer's: x Wᵀ + b + s (x Aᵀ) Bᵀ
    for out, weight, bias, a, b, s in zip(siblings(x, *lora_as, *lora_bs), weights, biases, lora_as, lora_bs,
                                          scalings, strict=True):
        expected = lora_linear.LoraLinearFunction.apply(x, weight, bias, a, b, s)
        torch.testing.assert_close(out, expected)


def test_an_input_without_gradient_gets_none_and_adapters_still_learn():
    model = fully_patched(tiny_lora())
    attention = model.base_model.model.model.layers[0].self_attn
    x = torch.randn(1, 3, 32)  # requires no grad, like the first layer's normed embeddings
    query, key, value = lora_siblings.project((attention.q_proj, attention.k_proj, attention.v_proj), x)
    (query.sum() + key.sum() + value.sum()).backward()
    assert attention.q_proj.lora_A["default"].weight.grad is not None
    assert attention.v_proj.lora_B["default"].weight.grad is not None


def test_layers_peft_must_handle_run_one_by_one(counted_calls):
    model = fully_patched(tiny_lora())
    attention = model.base_model.model.model.layers[0].self_attn
    layers = (attention.q_proj, attention.k_proj, attention.v_proj)
    x = torch.randn(3, 32)
    fused = lora_siblings.project(layers, x)
    for out, layer in zip(fused, layers, strict=True):
        torch.testing.assert_close(out, layer(x))
    assert counted_calls == {3: 1}
    with model.disable_adapter():  # e.g. the DPO reference pass
        for out, layer in zip(lora_siblings.project(layers, x), layers, strict=True):
            torch.testing.assert_close(out, layer.base_layer(x))
    assert counted_calls == {3: 1}
    dora = fully_patched(tiny_lora(use_dora=True))
    dora_attention = dora.base_model.model.model.layers[0].self_attn
    dora_layers = (dora_attention.q_proj, dora_attention.k_proj, dora_attention.v_proj)
    assert lora_siblings.fusable_adapters(dora_layers, x) is None
    plain = torch.nn.Linear(32, 32)
    assert lora_siblings.fusable_adapters((attention.q_proj, plain), x) is None  # not a LoRA layer
    torch.testing.assert_close(lora_siblings.project((attention.q_proj, plain), x)[1], plain(x))
