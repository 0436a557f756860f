"""apply_finetuning (full / freeze / LoRA, adapters) and build_param_groups (decay, LoRA+)."""

import pytest
import torch
from peft import PeftModel

from tunery.config.schema import FinetuningArgs
from tunery.errors import ConfigError, ModelError
from tunery.model.adapters import (
    LORAPLUS_EMBEDDING_LR,
    apply_finetuning,
    build_param_groups,
    find_all_linear_modules,
)

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def backward(model, batch) -> None:
    model(**batch).loss.backward()


def test_full_trains_everything(tiny_llama, batch):
    tiny_llama.requires_grad_(False)
    model = apply_finetuning(tiny_llama, FinetuningArgs(finetuning_type="full"))
    assert trainable_names(model) == {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize(
    ("layers", "modules", "extra", "expected_prefixes"),
    [
        (1, "all", None, ["model.layers.1."]),
        (-1, "all", None, ["model.layers.0."]),
        (5, "all", None, ["model.layers.0.", "model.layers.1."]),
        (1, "mlp", None, ["model.layers.1.mlp."]),
        (1, "mlp,self_attn", "embed_tokens", ["model.layers.1.mlp.", "model.layers.1.self_attn.", "model.e"]),
    ],
)
def test_freeze_selects_layers_and_modules(tiny_llama, batch, layers, modules, extra, expected_prefixes):
    args = FinetuningArgs(
        finetuning_type="freeze",
        freeze_trainable_layers=layers,
        freeze_trainable_modules=modules,
        freeze_extra_modules=extra,
    )
    model = apply_finetuning(tiny_llama, args)
    all_names = {name for name, _ in model.named_parameters()}
    expected = {name for name in all_names if any(name.startswith(p) for p in expected_prefixes)}
    assert trainable_names(model) == expected

    backward(model, batch)
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in expected), name


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("freeze_trainable_modules", "attention", "freeze_trainable_modules: 'attention'"),
        ("freeze_extra_modules", "wte", "freeze_extra_modules: 'wte'"),
    ],
)
def test_freeze_rejects_unknown_modules(tiny_llama, key, value, message):
    args = FinetuningArgs(finetuning_type="freeze", **{key: value})
    with pytest.raises(ConfigError, match=message):
        apply_finetuning(tiny_llama, args)


def test_lora_all_targets_every_linear_but_the_head(tiny_llama, batch):
    assert find_all_linear_modules(tiny_llama) == LLAMA_LINEARS
    model = apply_finetuning(tiny_llama, FinetuningArgs(lora_rank=4, lora_dropout=0.1))
    config = model.peft_config["default"]
    assert sorted(config.target_modules) == LLAMA_LINEARS
    assert config.r == 4 and config.lora_alpha == 8 and config.lora_dropout == 0.1
    assert not hasattr(model.get_base_model().lm_head, "lora_A")

    backward(model, batch)
    for name, param in model.named_parameters():
        assert param.requires_grad == ("lora_" in name), name
        assert (param.grad is not None) == param.requires_grad, name


def test_lora_all_skips_vision_tower(tiny_llama):
    tiny_llama.model.vision_tower = torch.nn.Sequential(torch.nn.Linear(8, 8))
    assert find_all_linear_modules(tiny_llama) == LLAMA_LINEARS


def test_lora_explicit_targets_and_additional_target(tiny_llama):
    args = FinetuningArgs(lora_target="q_proj,v_proj", additional_target="embed_tokens", lora_alpha=3)
    model = apply_finetuning(tiny_llama, args)
    wrapped = {name.split(".")[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "v_proj"}
    assert model.peft_config["default"].lora_alpha == 3
    trainable = trainable_names(model)
    assert any("embed_tokens.modules_to_save" in name for name in trainable)
    assert not any("k_proj" in name for name in trainable)


def test_lora_unknown_target_is_a_config_error(tiny_llama):
    with pytest.raises(ConfigError, match="lora_target"):
        apply_finetuning(tiny_llama, FinetuningArgs(lora_target="query_key_value"))


def test_bf16_frozen_weights_with_fp32_trainable(tiny_llama, batch):
    model = apply_finetuning(tiny_llama.to(torch.bfloat16), FinetuningArgs())
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if param.requires_grad else torch.bfloat16), name
    backward(model, batch)  # mixed dtypes still run forward and backward
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def make_adapter(model_factory, folder, seed: int) -> None:
    """Save a LoRA adapter with non-zero B so merging it changes the logits."""
    torch.manual_seed(seed)
    peft_model = apply_finetuning(model_factory(), FinetuningArgs(lora_rank=2))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    peft_model.save_pretrained(folder)


@pytest.fixture
def two_adapters(tmp_path, tiny_llama):
    state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}

    def fresh():
        model = type(tiny_llama)(tiny_llama.config)
        model.load_state_dict(state)
        return model.eval()

    make_adapter(fresh, tmp_path / "a", seed=1)
    make_adapter(fresh, tmp_path / "b", seed=2)
    return fresh, [str(tmp_path / "a"), str(tmp_path / "b")]


def stacked_logits(fresh, paths, ids) -> torch.Tensor:
    model = fresh()
    for path in paths:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_inference_merges_all_adapters(two_adapters, batch):
    fresh, paths = two_adapters
    merged = apply_finetuning(fresh(), FinetuningArgs(), paths, for_training=False)
    assert not isinstance(merged, PeftModel)
    assert not any(p.requires_grad for p in merged.parameters())
    with torch.no_grad():
        logits = merged(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(logits, stacked_logits(fresh, paths, batch["input_ids"]))
    with torch.no_grad():
        assert not torch.allclose(logits, fresh()(input_ids=batch["input_ids"]).logits)


def test_training_merges_earlier_adapters_and_resumes_the_last(two_adapters, batch):
    fresh, paths = two_adapters
    model = apply_finetuning(fresh(), FinetuningArgs(), paths)
    assert isinstance(model, PeftModel)
    assert model.peft_config["default"].r == 2  # the resumed adapter, not a new rank-8 one
    assert trainable_names(model) and all("lora_" in n for n in trainable_names(model))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(logits, stacked_logits(fresh, paths, batch["input_ids"]))


def test_adapter_errors(tmp_path, tiny_llama, two_adapters):
    with pytest.raises(ModelError, match=r"adapter_config\.json"):
        apply_finetuning(tiny_llama, FinetuningArgs(), [str(tmp_path / "missing")])
    _, paths = two_adapters
    with pytest.raises(ConfigError, match="finetuning_type: lora"):
        apply_finetuning(tiny_llama, FinetuningArgs(finetuning_type="full"), paths)


def group_of(groups, param) -> dict:
    matches = [g for g in groups if any(p is param for p in g["params"])]
    assert len(matches) == 1
    return matches[0]


def test_param_groups_skip_decay_on_bias_and_norm(tiny_llama):
    model = apply_finetuning(tiny_llama, FinetuningArgs(finetuning_type="full"))
    model.model.layers[0].self_attn.q_proj.bias = torch.nn.Parameter(torch.zeros(32))
    groups = build_param_groups(model, FinetuningArgs(finetuning_type="full"), 1e-3, 0.1)
    layer = model.model.layers[0]
    assert group_of(groups, layer.self_attn.q_proj.weight)["weight_decay"] == 0.1
    assert group_of(groups, layer.self_attn.q_proj.bias)["weight_decay"] == 0.0
    assert group_of(groups, layer.input_layernorm.weight)["weight_decay"] == 0.0
    assert group_of(groups, model.model.norm.weight)["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups)  # the groups are a valid optimizer spec


def test_param_groups_cover_only_trainable(tiny_llama):
    model = apply_finetuning(tiny_llama, FinetuningArgs())
    groups = build_param_groups(model, FinetuningArgs(), 1e-3, 0.0)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


def test_loraplus_learning_rates(tiny_llama):
    args = FinetuningArgs(loraplus_lr_ratio=16.0, additional_target="norm")
    model = apply_finetuning(tiny_llama, args)
    groups = build_param_groups(model, args, 1e-4, 0.01)
    named = dict(model.named_parameters())
    for name, param in named.items():
        if not param.requires_grad:
            continue
        group = group_of(groups, param)
        if "lora_B" in name:
            assert group["lr"] == pytest.approx(1.6e-3) and group["weight_decay"] == 0.01
        elif "lora_A" in name:
            assert group["lr"] == pytest.approx(1e-4)
        else:  # the 1-D norm weight trained in full: B-rate, no decay (LLaMA-Factory's grouping)
            assert param.ndim == 1 and group["lr"] == pytest.approx(1.6e-3) and group["weight_decay"] == 0.0
    torch.optim.AdamW(groups)


def test_loraplus_embedding_lr(tiny_llama):
    args = FinetuningArgs(loraplus_lr_ratio=4.0, lora_target="q_proj,embed_tokens")
    model = apply_finetuning(tiny_llama, args)
    groups = build_param_groups(model, args, 1e-4, 0.0)
    named = dict(model.named_parameters())
    embedding_b = [p for n, p in named.items() if "lora_embedding_B" in n]
    assert embedding_b
    assert all(group_of(groups, p)["lr"] == LORAPLUS_EMBEDDING_LR for p in embedding_b)
    embedding_a = [p for n, p in named.items() if "lora_embedding_A" in n]
    assert all(group_of(groups, p)["lr"] == pytest.approx(1e-4) for p in embedding_a)
