"""LoRA variants checked by their math: DoRA, rsLoRA, PiSSA (+ conversion to LoRA), LoftQ, LoRA+."""

import math

import pytest
import torch
from peft import PeftModel
from train_tiny import save_tiny_model
from transformers import AutoModelForCausalLM

from tunery.config.schema import FinetuningArgs, RunConfig
from tunery.errors import ConfigError
from tunery.model.adapters import apply_finetuning, build_param_groups
from tunery.model.loftq import quantize_dequantize
from tunery.model.save import save_trained

RANK, ALPHA = 4, 8


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-variants"))


def fresh(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


def run_config(**keys) -> RunConfig:
    config = RunConfig()
    for key, value in keys.items():
        section = "quantization" if key.startswith(("loftq", "quantization")) else "methods"
        setattr(getattr(config, section), key, value)
    return config


def lora_model(tiny_dir, **keys):
    args = FinetuningArgs(lora_rank=RANK, lora_alpha=ALPHA)
    return apply_finetuning(fresh(tiny_dir), args, run_config=run_config(**keys))


def ids() -> torch.Tensor:
    return torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(3))


def logits(model, input_ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids() if input_ids is None else input_ids).logits


def train_steps(model, steps: int = 3, lr: float = 5e-2) -> None:
    """A few AdamW steps on a fixed batch, so every adapter weight moves."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        batch = ids()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def lora_layers(model):
    return [m for _, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]


# ----------------------------------------------------------------- DoRA


def test_dora_magnitude_is_the_weight_row_norm_and_trains(tiny_dir):
    base = fresh(tiny_dir)
    q_weight = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = lora_model(tiny_dir, use_dora=True)
    magnitudes = {n: p for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitudes) == len(lora_layers(model)) > 0
    assert all(p.requires_grad for p in magnitudes.values())
    q_name = next(n for n in magnitudes if "layers.0.self_attn.q_proj" in n)
    # DoRA's m starts as the norm of each output row of W (B = 0, so W + BA = W)
    torch.testing.assert_close(magnitudes[q_name].detach(), q_weight.norm(dim=1))
    before = {n: p.detach().clone() for n, p in magnitudes.items()}
    train_steps(model, steps=1)
    assert all(not torch.equal(before[n], p.detach()) for n, p in magnitudes.items())


# ----------------------------------------------------------------- rsLoRA


@pytest.mark.parametrize(("rslora", "expected"), [(True, ALPHA / math.sqrt(RANK)), (False, ALPHA / RANK)])
def test_rslora_scaling_is_alpha_over_sqrt_rank(tiny_dir, rslora, expected):
    model = lora_model(tiny_dir, use_rslora=rslora)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(expected)
    # and the forward pass really adds scaling * B A x
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        x = torch.randn(3, layer.in_features)
        delta = layer(x) - layer.get_base_layer()(x)
        want = expected * x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    torch.testing.assert_close(delta, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- PiSSA


def test_pissa_initialises_from_top_singular_directions(tiny_dir):
    weight = fresh(tiny_dir).model.layers[1].mlp.down_proj.weight.detach().clone()
    model = lora_model(tiny_dir, pissa_init=True, pissa_iter=-1)
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    principal = (u[:, :RANK] * s[:RANK]) @ vh[:RANK]
    torch.testing.assert_close(layer.scaling["default"] * b @ a, principal, rtol=1e-4, atol=1e-5)
    # A's rows are the top right singular vectors (up to sign), B's columns the top left ones
    unit_a, unit_b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=0)
    torch.testing.assert_close(unit_a.abs(), vh[:RANK].abs(), atol=1e-4, rtol=0)
    torch.testing.assert_close(unit_b.abs(), u[:, :RANK].abs(), atol=1e-4, rtol=0)
    # the base keeps the residual, so base + adapter is still W
    residual = layer.get_base_layer().weight.detach()
    torch.testing.assert_close(residual, weight - principal, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pissa_iter", [-1, 4])
def test_pissa_model_equals_the_base_model_at_step_zero(tiny_dir, pissa_iter):
    expected = logits(fresh(tiny_dir))
    model = lora_model(tiny_dir, pissa_init=True, pissa_iter=pissa_iter)
    torch.testing.assert_close(logits(model), expected, rtol=1e-4, atol=1e-4)


def test_pissa_convert_saves_a_lora_adapter_for_the_original_base(tiny_dir, tmp_path):
    model = lora_model(tiny_dir, pissa_init=True, pissa_iter=-1, pissa_convert=True)
    train_steps(model)
    trained = logits(model)
    assert not torch.allclose(trained, logits(fresh(tiny_dir)), atol=1e-3)  # training changed the model

    out = save_trained(model, None, tmp_path / "out")
    saved = PeftModel.from_pretrained(fresh(tiny_dir), out)  # the untouched original base
    config = saved.peft_config["default"]
    assert config.init_lora_weights is True and config.r == 2 * RANK
    torch.testing.assert_close(logits(saved), trained, rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"
    ]


def test_unconverted_pissa_adapter_recomputes_its_residual_on_load(tiny_dir, tmp_path):
    model = lora_model(tiny_dir, pissa_init=True, pissa_iter=-1)
    train_steps(model)
    trained = logits(model)
    out = save_trained(model, None, tmp_path / "out")
    saved = PeftModel.from_pretrained(fresh(tiny_dir), out)  # PEFT re-runs the (exact) SVD on load
    assert saved.peft_config["default"].init_lora_weights == "pissa"
    torch.testing.assert_close(logits(saved), trained, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- LoftQ


@pytest.mark.parametrize(("bits", "iterations"), [(4, 1), (4, 3), (8, 1)])
def test_loftq_adapter_reduces_the_quantization_error(tiny_dir, bits, iterations):
    originals = {n: p.detach().clone() for n, p in fresh(tiny_dir).named_parameters()}
    model = lora_model(tiny_dir, loftq_bits=bits, loftq_iter=iterations)
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert layers
    for name, layer in layers.items():
        weight = originals[name.removeprefix("base_model.model.") + ".weight"]
        quantized = layer.get_base_layer().weight.detach()
        adapter = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        error_with_adapter = torch.linalg.norm(weight - (quantized + adapter.detach()))
        assert error_with_adapter < torch.linalg.norm(weight - quantized)
        # the base really is a quantized weight: quantizing it again changes nothing
        torch.testing.assert_close(quantize_dequantize(quantized, bits), quantized, rtol=1e-3, atol=1e-4)
        if iterations == 1:
            torch.testing.assert_close(quantized, quantize_dequantize(weight, bits))


def test_loftq_model_is_closer_to_the_original_than_the_quantized_base(tiny_dir):
    expected = logits(fresh(tiny_dir))
    model = lora_model(tiny_dir, loftq_bits=4, loftq_iter=2)
    with model.disable_adapter():
        quantized_only = logits(model)
    assert (logits(model) - expected).norm() < (quantized_only - expected).norm()


# ----------------------------------------------------------------- LoRA+ and errors


def test_loraplus_puts_every_b_matrix_in_the_faster_group(tiny_dir):
    model = apply_finetuning(fresh(tiny_dir), FinetuningArgs(lora_rank=RANK, loraplus_lr_ratio=8))
    groups = build_param_groups(model, FinetuningArgs(loraplus_lr_ratio=8), 1e-4, 0.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    b_names = [n for n in named if "lora_B" in n]
    a_names = [n for n in named if "lora_A" in n]
    assert b_names and a_names
    assert all(lr_of[id(named[n])] == pytest.approx(8e-4) for n in b_names)
    assert all(lr_of[id(named[n])] == pytest.approx(1e-4) for n in a_names)
    assert len(lr_of) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("finetuning_type", "keys", "message"),
    [
        ("full", {"use_dora": True}, "finetuning_type: lora"),
        ("lora", {"pissa_convert": True}, "pissa_init: true"),
        ("lora", {"pissa_init": True, "loftq_bits": 4}, "choose one"),
        ("lora", {"loftq_bits": 4, "quantization_bit": 4}, "remove quantization_bit"),
        ("lora", {"loftq_bits": 2}, "loftq_bits must be 4 or 8"),
    ],
)
def test_variant_misconfigurations_are_config_errors(tiny_dir, finetuning_type, keys, message):
    with pytest.raises(ConfigError, match=message):
        apply_finetuning(fresh(tiny_dir), FinetuningArgs(finetuning_type=finetuning_type),
                         run_config=run_config(**keys))
