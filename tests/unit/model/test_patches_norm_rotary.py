"""The fused RMSNorm and rotary-embedding patches: transformers' numbers, fewer temporaries."""

import copy
import importlib
import inspect
import re

import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

from tunery.model.patches import apply_training_patches, rms_norm, rotary

SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")


def tiny_llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**SHAPE, **overrides}))
    with torch.no_grad():  # non-trivial norm weights, so a wrong weight gradient shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_patched_llama_matches_stock_loss_and_every_gradient_in_fp32():
    stock = tiny_llama()
    fused = copy.deepcopy(stock)
    assert rms_norm.apply(fused) == 2 * 2 + 1  # two per layer and the final norm
    assert rotary.apply(fused) == 2
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    loss_stock, grads_stock = loss_and_grads(stock, ids)
    loss_fused, grads_fused = loss_and_grads(fused, ids)
    torch.testing.assert_close(loss_fused, loss_stock, rtol=1e-6, atol=1e-6)
    assert grads_fused.keys() == grads_stock.keys()
    for name, grad in grads_stock.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patched_model_forward_is_bit_identical(dtype):
    stock = tiny_llama().to(dtype)
    fused = copy.deepcopy(stock)
    rms_norm.apply(fused)
    rotary.apply(fused)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fused(input_ids=ids).logits, stock(input_ids=ids).logits)


def test_patched_llama_under_bf16_autocast_stays_close():
    stock = tiny_llama().to(torch.bfloat16)
    fused = copy.deepcopy(stock)
    apply_training_patches(fused)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_stock, grads_stock = loss_and_grads(stock, ids)
        loss_fused, grads_fused = loss_and_grads(fused, ids)
    torch.testing.assert_close(loss_fused, loss_stock, rtol=2e-2, atol=2e-2)
    for name, grad in grads_stock.items():
        assert grads_fused[name].dtype == grad.dtype, name
        got, want = grads_fused[name].float().flatten(), grad.float().flatten()
        cosine = torch.nn.functional.cosine_similarity(got, want, 0)
        assert cosine > 0.99, name


def test_norm_and_rotary_functions_pass_gradcheck_in_float64():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm.RMSNormFunction.apply(x, w, 1e-6), (x, weight))
    cos = torch.randn(2, 1, 5, 8, dtype=torch.float64)
    sin = torch.randn(2, 1, 5, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(rotary.RotaryFunction.apply, (x, cos, sin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_function_is_transformers_apply_rotary_pos_emb_bit_for_bit(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    # [batch, heads, tokens, dim], not contiguous, as the attention's projections give it
    q = torch.randn(2, 5, 3, 8, dtype=dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 5, 1, 8, dtype=dtype).transpose(1, 2).requires_grad_()
    cos, sin = torch.randn(2, 5, 8, dtype=dtype), torch.randn(2, 5, 8, dtype=dtype)  # unequal halves
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    got_q = rotary.RotaryFunction.apply(q, cos.unsqueeze(1), sin.unsqueeze(1))
    got_k = rotary.RotaryFunction.apply(k, cos.unsqueeze(1), sin.unsqueeze(1))
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert got_q.is_contiguous()
    grad_q, grad_k = torch.randn_like(want_q), torch.randn_like(want_k)
    want = torch.autograd.grad((want_q, want_k), (q, k), (grad_q, grad_k))
    got = torch.autograd.grad((got_q, got_k), (q, k), (grad_q, grad_k))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_generation_with_a_kv_cache_uses_the_stock_forward_and_matches():
    stock = tiny_llama().eval()
    fused = copy.deepcopy(stock)
    apply_training_patches(fused)
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(fused.generate(ids, **kwargs), stock.generate(ids, **kwargs))


def test_gemma_norm_is_left_alone_and_patching_is_idempotent():
    gemma = GemmaForCausalLM(GemmaConfig(**SHAPE, head_dim=8))
    assert rms_norm.apply(gemma) == 0  # Gemma scales by (1 + w): not Llama's norm
    llama = tiny_llama()
    assert rms_norm.apply(llama) == 5 and rms_norm.apply(llama) == 0
    assert rotary.apply(llama) == 2 and rotary.apply(llama) == 0


def test_version_gate():
    assert rms_norm.supported("5.3.0") and rotary.supported("5.3.0")
    assert not rms_norm.supported("4.57.0") and not rotary.supported("6.0.0")


def source_without_class_names(obj) -> str:
    return re.sub(r"\b\w*(Attention|RMSNorm)\b", "X", inspect.getsource(obj))


def modeling_module(class_name: str):
    family = {"Llama": "llama", "Mistral": "mistral", "Qwen2": "qwen2", "Qwen3": "qwen3",
              "Granite": "granite", "SmolLM3": "smollm3", "Ministral3": "ministral3", "Phi3": "phi3",
              "Glm": "glm", "Glm4": "glm4", "DeepseekV3": "deepseek_v3", "Arcee": "arcee", "Gemma": "gemma"}
    prefix = re.match(r"(.*?)(RMSNorm|Attention)$", class_name).group(1)
    return importlib.import_module(f"transformers.models.{family[prefix]}.modeling_{family[prefix]}")


@pytest.mark.parametrize("name", sorted(rms_norm.NORM_CLASSES))
def test_every_listed_norm_class_has_llamas_forward(name):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    cls = getattr(modeling_module(name), name)
    assert source_without_class_names(cls.forward) == source_without_class_names(LlamaRMSNorm.forward)


@pytest.mark.parametrize("name", sorted(rotary.ATTENTION_CLASSES))
def test_every_listed_attention_class_has_llamas_forward_and_rotary(name):
    from transformers.models.llama import modeling_llama

    module = modeling_module(name)
    forward = getattr(module, name).forward
    llama_forward = modeling_llama.LlamaAttention.forward
    assert source_without_class_names(forward) == source_without_class_names(llama_forward)
    rope, llama_rope = module.apply_rotary_pos_emb, modeling_llama.apply_rotary_pos_emb
    assert inspect.getsource(rope) == inspect.getsource(llama_rope)
