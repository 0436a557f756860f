"""The fused SwiGLU patch: same numbers as transformers' MLP, fewer bytes saved for backward."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tunery.model.patches import swiglu


def tiny(kind: str = "llama", act: str = "silu"):
    torch.manual_seed(0)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, hidden_act=act)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape))
    return LlamaForCausalLM(LlamaConfig(**shape))


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return loss.detach(), grads, sum(saved)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fused_swiglu_gives_identical_loss_and_gradients_and_saves_less(kind):
    stock = tiny(kind)
    fused = copy.deepcopy(stock)
    assert swiglu.apply(fused) == 2
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    loss_stock, grads_stock, saved_stock = loss_and_grads(stock, ids)
    loss_fused, grads_fused, saved_fused = loss_and_grads(fused, ids)
    assert torch.equal(loss_fused, loss_stock)
    assert grads_stock.keys() == grads_fused.keys()
    for name, grad in grads_stock.items():
        assert torch.equal(grads_fused[name], grad), name
    # one [tokens, intermediate] tensor fewer per layer (fp32)
    assert saved_stock - saved_fused == 2 * 2 * 24 * 64 * 4


def test_fused_swiglu_matches_under_bf16_autocast():
    stock = tiny()
    fused = copy.deepcopy(stock)
    swiglu.apply(fused)
    gate = torch.randn(5, 64, requires_grad=True)
    up = torch.randn(5, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mlp_stock, mlp_fused = stock.model.layers[0].mlp, fused.model.layers[0].mlp
        out_stock, out_fused = mlp_stock(gate[:, :32]), mlp_fused(gate[:, :32])
    assert torch.equal(out_stock, out_fused)
    expected = torch.autograd.grad((torch.nn.functional.silu(gate) * up).sum(), (gate, up))
    got = torch.autograd.grad(swiglu.SiluMul.apply(gate, up).sum(), (gate, up))
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(have, want)


def test_only_silu_mlps_of_known_classes_are_patched_and_only_once():
    assert swiglu.apply(tiny(act="gelu")) == 0
    model = tiny()
    assert swiglu.apply(model) == 2
    assert swiglu.apply(model) == 0  # idempotent
    assert swiglu.apply(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0


def test_version_gate():
    assert swiglu.supported("5.24.0")
    assert not swiglu.supported("4.57.1")
    assert not swiglu.supported("6.0.0")
