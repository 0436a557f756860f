"""LongLoRA shift short attention: equal to the paper's grouping, causal, training-only, llama-only."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from train_tiny import run_config, save_tiny_model
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from tunery.config.load import build_config
from tunery.errors import ConfigError
from tunery.model.patches import shift_attn
from tunery.train.run import run_training


def reference_attention(q, k, v, shift, lengths=None):
    """S²-Attn written from the paper's description, one query at a time.

    The sequence (padded to a multiple of 8) is cut into 4 groups of g tokens; heads of the
    second half see groups shifted by g/2 (wrapping around the end); each token attends to
    the tokens of its group up to itself (causal in the group's order), except padding and
    tokens that come later in the text (the wrapped tokens at the end of the last group).
    """
    batch, heads, length, _ = q.shape
    repeats = heads // k.shape[1]
    padded = math.ceil(length / 8) * 8
    group = padded // 4
    out = torch.zeros_like(q)
    for b in range(batch):
        valid = length if lengths is None else lengths[b]
        for h in range(heads):
            offset = group // 2 if shift and h >= heads // 2 else 0
            for start in range(0, padded, group):
                members = [(start + offset + t) % padded for t in range(group)]
                for index, i in enumerate(members):
                    if i >= valid:
                        continue
                    keys = [j for j in members[: index + 1] if j <= i]
                    scores = torch.stack([q[b, h, i] @ k[b, h // repeats, j] for j in keys])
                    scores = scores / math.sqrt(q.shape[-1])
                    weights = scores.softmax(0)
                    out[b, h, i] = sum(w * v[b, h // repeats, j] for w, j in zip(weights, keys, strict=True))
    return out


def random_qkv(length, heads=4, kv_heads=2, batch=2, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=generator, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, length, dim, generator=generator, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, length, dim, generator=generator, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("shift", [True, False], ids=["shifted", "unshifted"])
@pytest.mark.parametrize(("length", "heads", "kv_heads"), [(16, 4, 2), (24, 3, 1), (13, 4, 4)])
def test_equals_reference_computation(shift, length, heads, kv_heads):
    q, k, v = random_qkv(length, heads, kv_heads)
    found = shift_attn.shift_short_attention(q, k, v, shift=shift)
    torch.testing.assert_close(found, reference_attention(q, k, v, shift), atol=1e-10, rtol=0)


def test_shift_changes_the_result_and_groups_really_restrict_attention():
    q, k, v = random_qkv(16)
    shifted = shift_attn.shift_short_attention(q, k, v, shift=True)
    unshifted = shift_attn.shift_short_attention(q, k, v, shift=False)
    k_all, v_all = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    full = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
    assert torch.equal(shifted[:, :2], unshifted[:, :2])  # first half of the heads is never shifted
    assert not torch.allclose(shifted[:, 2:], unshifted[:, 2:])
    torch.testing.assert_close(unshifted[:, :, :4], full[:, :, :4])  # first group: its own causal prefix
    assert not torch.allclose(unshifted[:, :, 4:], full[:, :, 4:])  # later groups do not see earlier ones


def paper_algorithm(q, k, v, group):
    """Algorithm 1 of the LongLoRA paper literally: roll half the heads by -g/2, causal attention
    inside consecutive groups, roll back."""
    batch, heads, length, dim = q.shape
    half = heads // 2

    def shift(x):
        x = torch.cat((x[:, :half], x[:, half:].roll(-group // 2, dims=2)), dim=1)
        return x.view(batch, heads, length // group, group, dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(shift(q), shift(k), shift(v), is_causal=True)
    out = out.transpose(1, 2).reshape(batch, heads, length, dim)
    return torch.cat((out[:, :half], out[:, half:].roll(group // 2, dims=2)), dim=1)


def test_matches_the_paper_except_that_wrapped_tokens_cannot_see_the_future():
    q, k, v = random_qkv(16, kv_heads=4)
    found = shift_attn.shift_short_attention(q, k, v)
    paper = paper_algorithm(q, k, v, group=4)
    torch.testing.assert_close(found[:, :, 2:], paper[:, :, 2:])
    torch.testing.assert_close(found[:, :2], paper[:, :2])
    # the paper's roll puts tokens 0-1 behind tokens 14-15 in the shifted heads' last group
    assert not torch.allclose(found[:, 2:, :2], paper[:, 2:, :2])
    v_grad = v.clone().requires_grad_(True)
    shift_attn.shift_short_attention(q, k, v_grad)[:, :, :2].sum().backward()
    assert torch.count_nonzero(v_grad.grad[:, :, 2:]) == 0  # token 0-1 outputs depend on no later token


def test_padding_mask_is_honoured_in_every_group():
    q, k, v = random_qkv(16)
    lengths = [16, 11]
    keep = torch.arange(16)[None, :] < torch.tensor(lengths)[:, None]
    mask = torch.ones(16, 16, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]
    found = shift_attn.shift_short_attention(q, k, v, attention_mask=mask)
    expected = reference_attention(q, k, v, True, lengths)
    assert torch.isfinite(found).all()
    torch.testing.assert_close(found[0], expected[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(found[1, :, :11], expected[1, :, :11], atol=1e-10, rtol=0)


def test_model_uses_shift_attention_only_while_training():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=128,
    ))
    ids = torch.randint(3, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    model.eval()
    full = model(input_ids=ids).logits
    shift_attn.enable(model)
    torch.testing.assert_close(model(input_ids=ids).logits, full)  # eval: full attention
    model.train()
    trained = model(input_ids=ids).logits
    # groups of 8 and a shift of 4: the first 4 tokens see their whole causal prefix in every head
    torch.testing.assert_close(trained[:, :4], full[:, :4])
    assert not torch.allclose(trained[:, 4:], full[:, 4:], atol=1e-4)


def test_non_llama_model_is_a_config_error():
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError, match=r"shift_attn .*'gpt2'"):
        shift_attn.enable(model)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def train_losses(model_dir, out, **keys) -> list[float]:
    run_training(build_config(run_config(model_dir, out, max_steps=3, **keys)))
    return [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def test_training_with_shift_attn_runs_and_differs(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    plain = train_losses(tiny_model_dir, tmp_path / "plain", flash_attn="sdpa")
    shifted = train_losses(tiny_model_dir, tmp_path / "shift", shift_attn=True)
    assert len(shifted) == 3 and all(math.isfinite(loss) for loss in shifted)
    assert shifted != pytest.approx(plain, abs=1e-4)
