"""Freeze tuning picks exactly the asked parameters; train_from_scratch starts from random weights."""

import json

import pytest
import torch
from safetensors.torch import load_file
from train_tiny import run_config, save_tiny_model
from transformers import AutoModelForCausalLM, LlamaConfig

from tunery.config.load import build_config
from tunery.config.schema import FinetuningArgs
from tunery.model.adapters import apply_finetuning
from tunery.model.load import load_model
from tunery.train.run import load_tokenizer_and_template, run_training


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-freeze"))


def four_layer_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config)


def trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def names_of(model, layers: list[int], modules: tuple[str, ...] = ("",)) -> set[str]:
    prefixes = tuple(f"model.layers.{i}.{m}" for i in layers for m in modules)
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


@pytest.mark.parametrize(
    ("layers", "expected_layers"), [(1, [3]), (2, [2, 3]), (-1, [0]), (-3, [0, 1, 2]), (9, [0, 1, 2, 3])]
)
def test_positive_trains_the_last_and_negative_the_first_layers(layers, expected_layers):
    model = apply_finetuning(four_layer_model(), FinetuningArgs(finetuning_type="freeze",
                                                               freeze_trainable_layers=layers))
    assert trainable(model) == names_of(model, expected_layers)


def test_trainable_modules_inside_the_chosen_layers():
    args = FinetuningArgs(finetuning_type="freeze", freeze_trainable_layers=-2,
                          freeze_trainable_modules="self_attn,post_attention_layernorm")
    model = apply_finetuning(four_layer_model(), args)
    assert trainable(model) == names_of(model, [0, 1], ("self_attn.", "post_attention_layernorm."))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("embed_tokens", {"model.embed_tokens.weight"}),
        ("lm_head", {"lm_head.weight"}),
        # the final norm only, not every layer's input_layernorm / post_attention_layernorm
        ("norm", {"model.norm.weight"}),
        ("embed_tokens,norm", {"model.embed_tokens.weight", "model.norm.weight"}),
    ],
)
def test_extra_modules_are_exactly_those_outside_the_layers(extra, expected):
    args = FinetuningArgs(finetuning_type="freeze", freeze_trainable_layers=1, freeze_trainable_modules="mlp",
                          freeze_extra_modules=extra)
    model = apply_finetuning(four_layer_model(), args)
    assert trainable(model) == names_of(model, [3], ("mlp.",)) | expected


def test_train_from_scratch_has_random_weights_and_trains(tiny_dir, tmp_path):
    keys = run_config(tiny_dir, tmp_path / "out", finetuning_type="full", train_from_scratch=True,
                      max_steps=3, learning_rate=1e-3)
    config = build_config(keys)
    tokenizer, _ = load_tokenizer_and_template(config)
    pretrained = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    scratch = load_model(config, tokenizer, for_training=True).state_dict()
    assert scratch.keys() == pretrained.keys()
    differing = [k for k in pretrained if not torch.equal(pretrained[k], scratch[k])]
    # every weight matrix is freshly drawn (norm weights start at one either way)
    assert set(differing) >= {k for k, v in pretrained.items() if v.ndim == 2}

    metrics = run_training(config)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    saved = load_file(tmp_path / "out" / "model.safetensors")
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[weight], pretrained[weight])
    logged = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert len([entry for entry in logged if "loss" in entry]) == 3
