"""Per-example attention: packed rows behave exactly like examples run alone."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
from transformers.masking_utils import create_causal_mask

from tunery.data.collate import collate_flat, collate_padded
from tunery.model.attention import (
    ATTENTION_NAME,
    CPU_BF16_UPCAST_MAX_TOKENS,
    attend_one,
    causal_sdpa,
    enable_varlen_attention,
)

LENGTHS = [7, 12, 5]


def tiny_model(kind: str, attn: str = ATTENTION_NAME) -> torch.nn.Module:
    """2-layer model with grouped-query attention (4 heads, 2 key/value heads)."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    config = LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def examples(seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 96, (n,), generator=generator).tolist() for n in LENGTHS]


def packed_row(seqs: list[list[int]]) -> dict:
    ids = [tok for seq in seqs for tok in seq]
    return {"input_ids": ids, "labels": ids, "seq_lens": [len(s) for s in seqs]}


def model_inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_logits_equal_each_example_run_alone(kind):
    model, seqs = tiny_model(kind), examples()
    with torch.no_grad():
        packed = model(**model_inputs(collate_flat([packed_row(seqs)]))).logits[0]
        alone = torch.cat([model(torch.tensor([seq])).logits[0] for seq in seqs])
    assert (packed - alone).abs().max() < 1e-4


def test_boundaries_are_found_from_position_ids_alone():
    model, seqs = tiny_model("llama"), examples()
    flat = collate_flat([packed_row(seqs)])
    with torch.no_grad():
        from_positions = model(flat["input_ids"], position_ids=flat["position_ids"]).logits
        from_cu_seq_lens = model(**model_inputs(flat)).logits
    assert (from_positions - from_cu_seq_lens).abs().max() < 1e-6


def test_several_packed_rows_in_one_batch_stay_apart():
    model, seqs = tiny_model("qwen2"), examples()
    first, second = collate_flat([packed_row(seqs)]), collate_flat([packed_row(seqs[::-1])])
    ids = torch.cat([first["input_ids"], second["input_ids"]])
    positions = torch.cat([first["position_ids"], second["position_ids"]])
    with torch.no_grad():
        batched = model(ids, position_ids=positions).logits
        separate = torch.cat([model(**model_inputs(first)).logits, model(**model_inputs(second)).logits])
    assert (batched - separate).abs().max() < 1e-4


def shifted_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = shifted_loss_sum(model(**model_inputs(batch), use_cache=False).logits, batch["labels"])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_flat_batch_loss_and_gradients_equal_the_padded_batch(kind):
    model = tiny_model(kind).train()
    rows = [{"input_ids": seq, "labels": [-100] * 2 + seq[2:]} for seq in examples()]
    flat_loss, flat_grads = loss_and_grads(model, collate_flat(rows))
    model.set_attn_implementation("sdpa")
    padded_loss, padded_grads = loss_and_grads(model, collate_padded(rows, pad_token_id=0))
    assert abs(flat_loss - padded_loss) < 1e-4
    for name, grad in padded_grads.items():
        assert torch.allclose(flat_grads[name], grad, atol=1e-5), name


def test_plain_sdpa_with_position_ids_lets_packed_examples_see_each_other():
    """Why the custom attention exists (DESIGN.md, 'Facts worth knowing')."""
    model, seqs = tiny_model("llama", attn="sdpa"), examples()
    flat = collate_flat([packed_row(seqs)])
    ids, positions = flat["input_ids"], flat["position_ids"]
    with torch.no_grad():
        alone = model(torch.tensor([seqs[1]])).logits[0]
        # With a 2-D attention mask (what padded collators send) or a KV cache (the default
        # use_cache=True in eval), restarting position ids alone do not separate examples.
        with_mask = model(ids, position_ids=positions, attention_mask=torch.ones_like(ids)).logits[0]
        with_cache = model(ids, position_ids=positions).logits[0]
    second = slice(LENGTHS[0], LENGTHS[0] + LENGTHS[1])
    assert (with_mask[second] - alone).abs().max() > 1e-2
    assert (with_cache[second] - alone).abs().max() > 1e-2


def test_varlen_never_builds_a_dense_mask_where_sdpa_does():
    flat = collate_flat([packed_row(examples())])
    embeds = torch.zeros(1, sum(LENGTHS), 32)
    masks = {}
    for attn in ("sdpa", ATTENTION_NAME):
        config = tiny_model("llama", attn=attn).config
        masks[attn] = create_causal_mask(
            config=config, inputs_embeds=embeds, attention_mask=None, cache=None,
            position_ids=flat["position_ids"],
        )
    # transformers' own fix for packed rows is a T x T block-diagonal mask (quadratic cost)
    assert masks["sdpa"].shape == (1, 1, sum(LENGTHS), sum(LENGTHS))
    assert masks[ATTENTION_NAME] is None


def test_padded_batches_and_generation_fall_back_to_sdpa():
    varlen, sdpa = tiny_model("qwen2"), tiny_model("qwen2", attn="sdpa")
    padded = collate_padded([{"input_ids": s, "labels": s} for s in examples()], pad_token_id=0)
    with torch.no_grad():
        mask = padded["attention_mask"].bool()
        got = varlen(**model_inputs(padded)).logits[mask]
        want = sdpa(**model_inputs(padded)).logits[mask]
        prompt = torch.tensor([examples()[0]])
        tokens = varlen.generate(prompt, max_new_tokens=5, do_sample=False)
        reference = sdpa.generate(prompt, max_new_tokens=5, do_sample=False)
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(tokens, reference)


def test_enable_varlen_attention_switches_a_loaded_peft_model():
    from peft import LoraConfig, get_peft_model

    model, seqs = tiny_model("llama", attn="sdpa"), examples()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    flat = model_inputs(collate_flat([packed_row(seqs)]))
    with torch.no_grad():
        before = peft_model(**flat).logits[0]
        assert enable_varlen_attention(peft_model) is peft_model
        after = peft_model(**flat).logits[0]
        alone = torch.cat([peft_model(torch.tensor([seq])).logits[0] for seq in seqs])
    assert (before - alone).abs().max() > 1e-2  # sdpa mixed the examples
    assert (after - alone).abs().max() < 1e-4


def test_bf16_packed_logits_stay_close_to_unpacked():
    model, seqs = tiny_model("llama").to(torch.bfloat16), examples()
    with torch.no_grad():
        packed = model(**model_inputs(collate_flat([packed_row(seqs)]))).logits[0].float()
        alone = torch.cat([model(torch.tensor([seq])).logits[0] for seq in seqs]).float()
    assert packed.dtype == torch.float32
    assert (packed - alone).abs().max() < 5e-2


@pytest.mark.parametrize("window, softcap", [(4, None), (None, 5.0), (4, 5.0)])
def test_window_and_softcap_match_an_explicit_reference(window, softcap):
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 9, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    got = attend_one(q, k, v, 0.0, None, window, softcap)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = q @ kk.transpose(-1, -2) / 8**0.5
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    i = torch.arange(9)
    allowed = (i[:, None] >= i[None, :]) & ((i[:, None] - i[None, :]) < (window or 99))
    want = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vv
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize(("length", "attended_in"), [(256, "fp32"), (257, "bf16")])
def test_short_bf16_examples_are_attended_in_fp32_long_ones_in_bf16(length, attended_in):
    assert CPU_BF16_UPCAST_MAX_TOKENS == 256
    torch.manual_seed(0)
    q = torch.randn(1, 4, length, 8).bfloat16().requires_grad_()
    k, v = (torch.randn(1, 2, length, 8).bfloat16().requires_grad_() for _ in range(2))
    out = causal_sdpa(q, k, v, 0.0, None)
    out.float().sum().backward()
    assert out.dtype == q.grad.dtype == k.grad.dtype == torch.bfloat16
    in_fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    in_bf16 = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert not torch.equal(in_fp32.bfloat16(), in_bf16)  # so the comparison below tells them apart
    assert torch.equal(out, in_fp32.bfloat16() if attended_in == "fp32" else in_bf16)
