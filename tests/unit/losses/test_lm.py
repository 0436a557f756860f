"""causal_lm_loss against a hand computation: full logits + F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunery.data.collate import collate_flat, collate_padded
from tunery.losses import LOSSES
from tunery.losses.lm import causal_lm_loss
from tunery.model.attention import ATTENTION_NAME

ROWS = [
    {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]},
    {"input_ids": [11, 12, 13, 14], "labels": [-100, 12, 13, 14]},
    {"input_ids": [15, 16, 17, 18, 19, 20, 21], "labels": [-100, -100, 17, -100, 19, 20, 21]},
]


def tiny_llama(**extra) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, **extra,
    )
    return LlamaForCausalLM._from_config(config, attn_implementation=ATTENTION_NAME)


def hand_loss(model, batch, softcap=None) -> tuple[torch.Tensor, int]:
    """The textbook way: every logit, shift by one, F.cross_entropy(sum)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits.float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="sum")
    return loss, int((labels != -100).sum())


def grads_of(model, loss_fn, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad()
    loss, n_tokens = loss_fn(model, batch)
    (loss / n_tokens).backward()  # the loop's normalisation
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), torch.as_tensor(n_tokens), grads


def assert_same(model, batch, chunk_size=4, softcap=None, atol=1e-5):
    ours = grads_of(model, lambda m, b: causal_lm_loss(m, b, chunk_size=chunk_size), batch)
    hand = grads_of(model, lambda m, b: hand_loss(m, b, softcap), batch)
    assert torch.allclose(ours[0], hand[0], atol=1e-4), (ours[0], hand[0])
    assert int(ours[1]) == int(hand[1])
    assert ours[2].keys() == hand[2].keys() and ours[2]
    for name, grad in hand[2].items():
        assert torch.allclose(ours[2][name], grad, atol=atol), name


@pytest.mark.parametrize("collate", ["flat", "padded"])
def test_full_model_loss_and_gradients_match_hand_computation(collate):
    # Tied embeddings: the output head's weight is trainable, so its gradient is checked too.
    model = tiny_llama(tie_word_embeddings=True)
    batch = collate_flat(ROWS) if collate == "flat" else collate_padded(ROWS, pad_token_id=0)
    assert_same(model, batch)


def test_counts_only_shifted_label_positions():
    _, n_tokens = causal_lm_loss(tiny_llama(), collate_flat(ROWS))
    assert int(n_tokens) == 3 + 3 + 4


def test_lora_model_matches_hand_computation():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter do something
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    assert_same(model, collate_flat(ROWS))


def test_lora_on_the_output_head_uses_the_checkpointed_path():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    assert type(model.get_base_model().get_output_embeddings()) is not torch.nn.Linear
    assert_same(model, collate_flat(ROWS), chunk_size=3)


def test_final_logit_softcapping_is_applied():
    model = tiny_llama(final_logit_softcapping=0.5)  # small cap so it changes the loss a lot
    assert_same(model, collate_flat(ROWS), softcap=0.5)


def test_temperature_divides_the_capped_logits_in_loss_and_gradients():
    from tunery.losses.lm import LogitTransform, head_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 16, bias=False)
    hidden = torch.randn(5, 8, requires_grad=True)
    targets = torch.tensor([1, 3, 5, 7, 9])
    transform = LogitTransform(softcap=2.0, temperature=0.7)
    ours = head_cross_entropy(head, hidden, targets, transform, chunk_size=2)
    ours_grads = torch.autograd.grad(ours, [hidden, head.weight])
    logits = 2.0 * torch.tanh(head(hidden) / 2.0) / 0.7  # cap first, then the sampling temperature
    hand = F.cross_entropy(logits, targets, reduction="sum")
    hand_grads = torch.autograd.grad(hand, [hidden, head.weight])
    assert torch.allclose(ours, hand, atol=1e-5)
    for got, want in zip(ours_grads, hand_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_bf16_frozen_base_with_fp32_adapter():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if "lora_" in name else torch.bfloat16)
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    loss, n_tokens = causal_lm_loss(model, collate_flat(ROWS), chunk_size=4)
    hand, _ = hand_loss(model, collate_flat(ROWS))
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, hand, rtol=1e-3)
    (loss / n_tokens).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_no_grad_and_no_labels():
    model = tiny_llama()
    with torch.no_grad():
        loss, _ = causal_lm_loss(model, collate_flat(ROWS))
        hand, _ = hand_loss(model, collate_flat(ROWS))
    assert not loss.requires_grad and torch.allclose(loss, hand, atol=1e-4)
    unlabeled = [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}]
    loss, n_tokens = causal_lm_loss(model, collate_flat(unlabeled))
    loss.backward()  # an all-prompt batch must not break the step
    assert loss.item() == 0.0 and int(n_tokens) == 0


def test_registered_by_name():
    assert LOSSES.get("causal_lm") is causal_lm_loss
