"""RoPE scaling: each type lands in the config as transformers 5 reads it and changes the rotary layer.

The tiny model has 128 positions and head_dim 8, so its inverse frequencies are
1, 0.1, 0.01, 0.001; cutoff_len 300 gives factor ceil(300 / 128) = 3.
"""

import logging
import math

import pytest
import torch

from tunery.model.load import load_model

DEFAULT_INV_FREQ = torch.tensor([1.0, 0.1, 0.01, 0.001])
X = torch.zeros(1, 1, 8)


def load_scaled(run_config, tokenizer, kind, cutoff_len=300, for_training=True):
    config = run_config(model={"rope_scaling": kind}, data={"cutoff_len": cutoff_len})
    return load_model(config, tokenizer, for_training=for_training)


def cos_sin(model, length):
    return model.model.rotary_emb(X, torch.arange(length)[None])


@pytest.mark.parametrize(
    ("kind", "max_positions", "extra"),
    [
        ("linear", 384, {}),
        ("dynamic", 128, {}),  # dynamic NTK scales beyond max_position_embeddings, so that stays
        ("yarn", 384, {"original_max_position_embeddings": 128}),
        ("llama3", 384, {"original_max_position_embeddings": 128, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0}),
    ],
)
def test_config_carries_the_scaling(run_config, tokenizer, kind, max_positions, extra):
    model = load_scaled(run_config, tokenizer, kind)
    assert model.config.rope_parameters == {"rope_type": kind, "rope_theta": 10000.0, "factor": 3.0, **extra}
    assert model.config.max_position_embeddings == max_positions
    assert model.model.rotary_emb.rope_type == kind
    ids = torch.randint(3, 64, (1, 300))
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_linear_interpolates_positions(run_config, tokenizer):
    plain, scaled = load_model(run_config(), tokenizer, True), load_scaled(run_config, tokenizer, "linear")
    torch.testing.assert_close(scaled.model.rotary_emb.inv_freq, DEFAULT_INV_FREQ / 3)
    plain_cos, _ = cos_sin(plain, 100)
    scaled_cos, _ = cos_sin(scaled, 300)
    torch.testing.assert_close(scaled_cos[0, 3 * 33], plain_cos[0, 33])  # position 99 looks like 33 did


def test_dynamic_ntk_raises_the_base_only_beyond_the_trained_length(run_config, tokenizer):
    plain, scaled = load_model(run_config(), tokenizer, True), load_scaled(run_config, tokenizer, "dynamic")
    torch.testing.assert_close(cos_sin(scaled, 100), cos_sin(plain, 100))  # within 128 positions: unchanged
    scaled_cos, _ = cos_sin(scaled, 300)
    plain_cos, _ = cos_sin(plain, 300)
    assert not torch.allclose(scaled_cos[0, 200], plain_cos[0, 200])
    base = 10000.0 * ((3 * 300 / 128) - 2) ** (8 / 6)  # transformers' NTK-aware base for 300 tokens
    expected = 1.0 / base ** (torch.arange(0, 8, 2).float() / 8)
    torch.testing.assert_close(scaled.model.rotary_emb.inv_freq, expected)


def test_yarn_interpolates_low_frequencies_and_scales_attention(run_config, tokenizer):
    rotary = load_scaled(run_config, tokenizer, "yarn").model.rotary_emb
    assert rotary.inv_freq[0] == 1.0  # fastest rotation: extrapolated as is
    torch.testing.assert_close(rotary.inv_freq[2:], DEFAULT_INV_FREQ[2:] / 3)  # slow ones: interpolated
    assert rotary.attention_scaling == pytest.approx(0.1 * math.log(3) + 1)


def test_llama3_divides_only_the_long_wavelengths(run_config, tokenizer):
    rotary = load_scaled(run_config, tokenizer, "llama3").model.rotary_emb
    # wavelength 2*pi < 128/4 stays; 628 and 6283 > 128 are divided by 3; 62.8 lies in between
    assert rotary.inv_freq[0] == 1.0
    torch.testing.assert_close(rotary.inv_freq[2:], DEFAULT_INV_FREQ[2:] / 3)
    assert DEFAULT_INV_FREQ[1] / 3 < rotary.inv_freq[1] < DEFAULT_INV_FREQ[1]


def test_no_scaling_when_cutoff_fits(run_config, tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="tunery.model.load"):
        model = load_scaled(run_config, tokenizer, "linear", cutoff_len=100)
    assert model.config.rope_parameters["rope_type"] == "default"
    assert model.config.max_position_embeddings == 128
    assert "rope_scaling is not needed" in caplog.text


def test_inference_factor(run_config, tokenizer, tmp_path):
    doubled = load_scaled(run_config, tokenizer, "linear", cutoff_len=100, for_training=False)
    assert doubled.config.rope_parameters["factor"] == 2.0  # LLaMA-Factory's inference default
    as_trained = load_scaled(run_config, tokenizer, "linear", for_training=False)
    assert as_trained.config.rope_parameters["factor"] == 3.0  # the training YAML's factor
    as_trained.save_pretrained(tmp_path / "scaled")  # a full run saved with its scaling
    tokenizer.save_pretrained(tmp_path / "scaled")
    config = run_config(model={"rope_scaling": "linear"}, data={"cutoff_len": 100})
    config.model.model_name_or_path = str(tmp_path / "scaled")
    reloaded = load_model(config, tokenizer, for_training=False)
    assert reloaded.config.rope_parameters["factor"] == 3.0  # not stretched a second time
    assert reloaded.config.max_position_embeddings == 384
