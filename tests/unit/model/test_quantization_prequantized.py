"""Models that arrive quantized (GPTQ, AWQ, AQLM, HQQ, bitsandbytes folders), and export's refusals.

A folder whose config.json declares a ``quantization_config`` is detected before its
weights load. GPTQ/AWQ/AQLM kernels are not installed here (they target NVIDIA GPUs),
so those folders must fail with the package to install; a saved bitsandbytes 4-bit
folder loads on the CPU and trains LoRA, and its adapter runs unmerged for inference.
"""

import json
from pathlib import Path

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from peft import PeftModel
from train_tiny import run_config, save_tiny_model  # tests/support, on sys.path through conftest
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from tunery.config.load import build_config
from tunery.errors import ConfigError, ModelError
from tunery.export.run import export_model
from tunery.model.adapters import apply_finetuning
from tunery.model.load import load_model


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    """train_tiny's tokenizer with a 2-layer Llama of hidden size 256 (big enough for 4-bit blocks)."""
    folder = save_tiny_model(tmp_path_factory.mktemp("prequant_plain"))
    config = LlamaConfig.from_pretrained(folder)
    config.hidden_size, config.intermediate_size, config.head_dim = 256, 512, 64
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bnb_dir(plain_dir, tmp_path_factory) -> Path:
    """The tiny model saved already quantized to 4-bit NF4 by bitsandbytes."""
    folder = tmp_path_factory.mktemp("prequant_bnb")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    AutoModelForCausalLM.from_pretrained(plain_dir, quantization_config=config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(plain_dir).save_pretrained(folder)
    return folder


def declare(folder: Path, quantization: dict) -> Path:
    """Mark a model folder as quantized the way GPTQ/AWQ/AQLM exports do, in config.json."""
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data["quantization_config"] = quantization
    path.write_text(json.dumps(data))
    return folder


def load(model_dir: Path, tmp_path: Path, for_training: bool = True, **keys):
    config = build_config(run_config(model_dir, tmp_path / "out", **keys))
    return config, load_model(config, AutoTokenizer.from_pretrained(model_dir), for_training=for_training)


@pytest.mark.parametrize(("method", "packages"), [
    ("gptq", "optimum and gptqmodel"),
    ("awq", "gptqmodel"),
    ("aqlm", "aqlm"),
])
def test_gptq_awq_aqlm_without_their_kernels_name_the_package_and_hardware(tmp_path, method, packages):
    folder = declare(save_tiny_model(tmp_path / "model"), {"quant_method": method, "bits": 4})
    with pytest.raises(ModelError) as caught:
        load(folder, tmp_path)
    message = str(caught.value)
    assert f"quantized with {method.upper()}" in message
    assert f"needs {packages} (pip install" in message
    assert "NVIDIA GPU" in message


def test_quantization_bit_on_an_already_quantized_model_is_refused(tmp_path):
    folder = declare(save_tiny_model(tmp_path / "model"), {"quant_method": "gptq", "bits": 4})
    with pytest.raises(ModelError, match=r"already quantized \(gptq\); quantization_bit would quantize"):
        load(folder, tmp_path, quantization_bit=4)


def test_a_prequantized_method_must_match_the_model(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    with pytest.raises(ModelError, match="declares no quantization; remove quantization_method"):
        load(folder, tmp_path, quantization_method="awq")


def test_an_hqq_saved_model_points_to_quantizing_on_load(tmp_path):
    folder = declare(save_tiny_model(tmp_path / "model"), {"quant_method": "hqq", "nbits": 4})
    with pytest.raises(ModelError, match="quantization_method: hqq"):
        load(folder, tmp_path)


def test_a_saved_bitsandbytes_model_trains_lora_and_runs_its_adapter_unmerged(bnb_dir, tmp_path):
    config, model = load(bnb_dir, tmp_path)
    assert isinstance(model.model.layers[0].mlp.up_proj, Linear4bit)
    model = apply_finetuning(model, config.finetuning, run_config=config)
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.save_pretrained(tmp_path / "adapter")

    _, chat = load(bnb_dir, tmp_path, for_training=False, adapter_name_or_path=str(tmp_path / "adapter"))
    assert isinstance(chat, PeftModel), "an adapter cannot be merged into quantized weights"
    assert isinstance(chat.get_base_model().model.layers[0].mlp.up_proj.base_layer, Linear4bit)
    with torch.no_grad():
        trained, running = model.eval()(input_ids=ids).logits, chat(input_ids=ids).logits
    assert torch.allclose(trained, running, atol=1e-4), "the adapter runs exactly as trained"


def test_freeze_tuning_a_saved_bitsandbytes_model_is_refused(bnb_dir, tmp_path):
    with pytest.raises(ConfigError, match="bitsandbytes-quantized model"):
        load(bnb_dir, tmp_path, finetuning_type="freeze")


def test_export_refuses_quantization_bit_and_names_the_full_precision_way(plain_dir, tmp_path):
    config = build_config({**run_config(plain_dir, tmp_path / "out"), "quantization_bit": 4,
                           "export_dir": str(tmp_path / "export")})
    with pytest.raises(ConfigError, match="merges the QLoRA adapter into the full-precision base"):
        export_model(config)
    assert not (tmp_path / "export").exists()


def test_export_refuses_an_already_quantized_base(bnb_dir, tmp_path):
    config = build_config({**run_config(bnb_dir, tmp_path / "out"), "export_dir": str(tmp_path / "export")})
    with pytest.raises(ModelError, match=r"quantized \(bitsandbytes\).*full-precision base model"):
        export_model(config)
