"""The fused LoRA linear patch: PEFT's numbers, fewer autograd nodes and bytes, PEFT's path when needed."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunery.model.patches import lora_linear, swiglu

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_lora(dtype=torch.float32, **lora):
    """A 2-layer LLaMA with LoRA on every linear layer and non-zero B (so the adapter matters)."""
    torch.manual_seed(0)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(dtype)
    options = dict(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0) | lora
    model = get_peft_model(model, LoraConfig(**options))
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn_like(param, dtype=torch.float32) * 0.1  # fp32 masters, like Tunery
    return model


def loss_and_grads(model, ids, autocast=False):
    """Loss, gradients and the bytes of activation storage autograd keeps (each storage once, no weights)."""
    model.zero_grad(set_to_none=True)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with (torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
          torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(saved.values())


IDS = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))


def test_fused_lora_gives_peft_loss_and_gradients_in_fp32_and_keeps_no_more():
    stock = tiny_lora()
    fused = copy.deepcopy(stock)
    assert lora_linear.apply(fused) == 2 * len(TARGETS)
    loss_stock, grads_stock, saved_stock = loss_and_grads(stock, IDS)
    loss_fused, grads_fused, saved_fused = loss_and_grads(fused, IDS)
    torch.testing.assert_close(loss_fused, loss_stock, rtol=1e-6, atol=1e-6)
    assert grads_fused.keys() == grads_stock.keys()
    assert len(grads_stock) == 2 * 2 * len(TARGETS)  # A and B of every target, nothing else
    for name, grad in grads_stock.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert saved_fused <= saved_stock  # what it saves is x and the rank-r x Aᵀ, as PEFT's nodes do


def test_a_swiglu_mlp_with_a_fused_down_projection_recomputes_its_product():
    stock = tiny_lora()
    fused_linear = copy.deepcopy(stock)
    lora_linear.apply(fused_linear)
    fused_mlp = copy.deepcopy(stock)
    assert swiglu.apply(fused_mlp) == 2 and lora_linear.apply(fused_mlp) == 2 * len(TARGETS)
    loss_stock, grads_stock, _ = loss_and_grads(stock, IDS)
    _, _, saved_linear = loss_and_grads(fused_linear, IDS)
    loss_mlp, grads_mlp, saved_mlp = loss_and_grads(fused_mlp, IDS)
    torch.testing.assert_close(loss_mlp, loss_stock, rtol=1e-6, atol=1e-6)
    for name, grad in grads_stock.items():
        torch.testing.assert_close(grads_mlp[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # per layer, the swiglu patch alone drops SiLU's output; the product is not kept either.
    # What it keeps instead is the gate and up LoRA A matrices stacked (lora_siblings), r x hidden each.
    tokens, intermediate, layers, rank, hidden = IDS.numel(), 64, 2, 4, 32
    stacked_a = 2 * rank * hidden * 4
    assert saved_linear - saved_mlp == layers * (2 * tokens * intermediate * 4 - stacked_a)


def test_fused_lora_under_bf16_autocast_stays_close_and_keeps_fp32_gradients():
    stock = tiny_lora(dtype=torch.bfloat16)
    fused = copy.deepcopy(stock)
    lora_linear.apply(fused)
    assert_close_under_bf16_autocast(stock, fused)


def assert_close_under_bf16_autocast(stock, fused):
    """Under bf16 autocast ``fused`` gives ``stock``'s loss and gradients to bf16 precision, in fp32."""
    loss_stock, grads_stock, _ = loss_and_grads(stock, IDS, autocast=True)
    loss_fused, grads_fused, _ = loss_and_grads(fused, IDS, autocast=True)
    torch.testing.assert_close(loss_fused, loss_stock, rtol=2e-2, atol=2e-2)
    for name, grad in grads_stock.items():
        assert grads_fused[name].dtype == torch.float32, name
        cosine = torch.nn.functional.cosine_similarity(grads_fused[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


def test_function_gradients_match_autograd_in_double():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    lora_a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    lora_b = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a, b: lora_linear.LoraLinearFunction.apply(x, weight, bias, a, b, 1.5),
        (x, lora_a, lora_b),
    )


def test_cases_peft_must_handle_go_to_peft():
    model = tiny_lora()
    lora_linear.apply(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 32)
    with_adapter = layer(x)
    with model.disable_adapter():  # e.g. the DPO reference pass
        torch.testing.assert_close(layer(x), layer.base_layer(x))
    torch.testing.assert_close(layer(x), with_adapter)
    dropout = tiny_lora(lora_dropout=0.5)
    lora_linear.apply(dropout)
    name = "default"
    dropout_layer = dropout.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_linear.plain_adapter(dropout_layer, x, (), {}) is None  # training mode: PEFT's dropout
    dropout.eval()
    assert lora_linear.plain_adapter(dropout_layer, x, (), {}) == name
    dora = tiny_lora(use_dora=True)
    lora_linear.apply(dora)
    dora_layer = dora.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_linear.plain_adapter(dora_layer, x, (), {}) is None
    torch.testing.assert_close(dora_layer(x), type(dora_layer).forward(dora_layer, x))


def test_only_lora_linear_layers_are_patched_and_only_once():
    model = tiny_lora()
    assert lora_linear.apply(model) == 2 * len(TARGETS)
    assert lora_linear.apply(model) == 0
    assert lora_linear.apply(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0


@pytest.mark.parametrize(("version", "ok"), [("0.21.2", True), ("0.20.0", False), ("1.0.0", False)])
def test_version_gate(version, ok):
    assert lora_linear.supported(version) is ok
