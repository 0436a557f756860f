"""LoRA SFT round trip on every model family transformers ships natively.

For each family a tiny random model is built from its config, given LoRA on
every linear layer but the head (``lora_target: all``), trained for two
optimizer steps on a fixed batch, saved with ``save_trained`` and reloaded as a
fresh base model plus the adapter with plain transformers + peft: the reloaded
model must give the same logits. Full and freeze tuning run on one family.
"""

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from tunery.config.schema import FinetuningArgs
from tunery.model.adapters import apply_finetuning, build_param_groups
from tunery.model.save import save_trained

TOKEN_IDS = {"vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
DECODER = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 128, "head_dim": 8, **TOKEN_IDS,
}
FAMILIES = {
    "llama": DECODER,
    "mistral": DECODER,
    "qwen2": DECODER,
    "qwen3": DECODER,
    "gemma": DECODER,
    "phi3": DECODER,
    "glm": DECODER,
    "glm4": DECODER,
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 4, **TOKEN_IDS},
}
# What `lora_target: all` must reach in each family (every linear layer but lm_head).
EXPECTED_TARGETS = {
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "glm": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"},
    "glm4": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"},
    "bloom": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
}
LLAMA_LIKE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **FAMILIES[family])
    return AutoModelForCausalLM.from_config(config)


def train_steps(model, batch, finetuning: FinetuningArgs, steps: int = 2) -> list[float]:
    """Plain AdamW over the trainable parameters, with the model's own loss (dropout off)."""
    model.train()
    optimizer = torch.optim.AdamW(build_param_groups(model, finetuning, 1e-2, 0.0))
    losses = []
    for _ in range(steps + 1):  # the last forward only measures the loss after `steps` updates
        loss = model(**batch).loss
        losses.append(loss.item())
        if len(losses) > steps:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return losses


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_round_trip(family, tmp_path, tokenizer, batch):
    base = build(family)
    base.save_pretrained(tmp_path / "base")
    finetuning = FinetuningArgs(finetuning_type="lora", lora_target="all", lora_rank=4)
    model = apply_finetuning(base, finetuning)

    wrapped = {name.split(".")[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == EXPECTED_TARGETS.get(family, LLAMA_LIKE)
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)

    losses = train_steps(model, batch, finetuning)
    assert losses[-1] < losses[0]

    save_trained(model, tokenizer, tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    fresh = PeftModel.from_pretrained(base, tmp_path / "out")
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits
        reloaded = fresh.eval()(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(reloaded, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "finetuning",
    [
        FinetuningArgs(finetuning_type="full"),
        FinetuningArgs(finetuning_type="freeze", freeze_trainable_layers=1, freeze_trainable_modules="mlp"),
    ],
    ids=["full", "freeze"],
)
def test_full_and_freeze_round_trip(finetuning, tmp_path, tokenizer, batch):
    model = apply_finetuning(build("qwen2"), finetuning)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    losses = train_steps(model, batch, finetuning)
    assert losses[-1] < losses[0]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable

    save_trained(model, tokenizer, tmp_path / "out")
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=batch["input_ids"]).logits, model(input_ids=batch["input_ids"]).logits
        )
