"""QLoRA on the CPU: bitsandbytes 4/8-bit and HQQ bases under a trained LoRA, checked layer by layer.

The tiny model here has hidden size 256 (train_tiny's 32 is smaller than bitsandbytes'
64-value 4-bit blocks), so every decoder linear layer is really quantized.
"""

from pathlib import Path

import bitsandbytes.functional as bnb_functional
import pytest
import torch
from bitsandbytes.nn import Linear4bit, Linear8bitLt
from hqq.core.quantize import HQQLinear
from train_tiny import run_config, save_tiny_model  # tests/support, on sys.path through conftest
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunery.config.load import build_config
from tunery.errors import ConfigError
from tunery.model.adapters import apply_finetuning
from tunery.model.load import load_model

HIDDEN = 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """train_tiny's tokenizer with a 2-layer Llama of hidden size 256."""
    folder = save_tiny_model(tmp_path_factory.mktemp("quant_tiny"))
    config = LlamaConfig.from_pretrained(folder)
    config.hidden_size, config.intermediate_size, config.head_dim = HIDDEN, 2 * HIDDEN, 64
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def make_config(model_dir: Path, tmp_path: Path, **keys):
    return build_config(run_config(model_dir, tmp_path / "out", **keys))


def load(model_dir: Path, tmp_path: Path, for_training: bool = True, **keys):
    config = make_config(model_dir, tmp_path, **keys)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return config, load_model(config, tokenizer, for_training=for_training)


def up_proj(model):
    return model.get_base_model().model.layers[0].mlp.up_proj if hasattr(model, "get_base_model") \
        else model.model.layers[0].mlp.up_proj


def quantized_state(model) -> dict[str, torch.Tensor]:
    """Copies of the quantized base tensors (packed integers and their scales)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
            if "lora_" not in name and tensor.dtype in (torch.uint8, torch.int8)}


def train_one_step(config, model) -> float:
    """apply_finetuning (LoRA), then one AdamW step on a fixed batch; returns the loss."""
    model = apply_finetuning(model, config.finetuning, run_config=config)
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    return model, float(loss.detach())


@pytest.mark.parametrize(("bits", "layer_type"), [(4, Linear4bit), (8, Linear8bitLt)])
def test_bnb_lora_step_trains_the_adapter_not_the_quantized_base(model_dir, tmp_path, bits, layer_type):
    config, model = load(model_dir, tmp_path, quantization_bit=bits)
    assert isinstance(model.model.layers[1].self_attn.q_proj, layer_type)
    assert not isinstance(model.lm_head, layer_type), "the output head stays in full precision"
    base_before = quantized_state(model)
    assert base_before, "the base holds packed integer weights"
    model, loss = train_one_step(config, model)
    assert torch.isfinite(torch.tensor(loss))
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.requires_grad for p in lora_b)
    assert all(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must have moved"
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in name for name in trainable), "only LoRA weights train"
    for name, tensor in quantized_state(model).items():
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(tensor, base_before[key]), f"{name} changed"


def test_a_4bit_base_takes_under_a_third_of_the_fp32_weight_memory(model_dir, tmp_path):
    _, fp32 = load(model_dir, tmp_path)
    _, four_bit = load(model_dir, tmp_path, quantization_bit=4)
    _, eight_bit = load(model_dir, tmp_path, quantization_bit=8)
    full, quarter, half = (m.get_memory_footprint() for m in (fp32, four_bit, eight_bit))
    assert quarter < full / 3
    assert quarter < half < full / 2  # 8-bit: one byte per weight, plus fp32 embeddings and head


@pytest.mark.parametrize(("quant_type", "double"), [("nf4", True), ("fp4", False)])
def test_4bit_type_and_double_quantization_are_applied(model_dir, tmp_path, quant_type, double):
    _, model = load(model_dir, tmp_path, quantization_bit=4, quantization_type=quant_type,
                    double_quantization=double)
    state = up_proj(model).weight.quant_state
    assert state.quant_type == quant_type
    assert state.nested is double  # double quantization: the absmax scales are 8-bit quantized too
    assert (state.state2 is not None) is double


def test_nf4_reconstructs_normal_weights_closer_than_fp4(model_dir, tmp_path):
    """NF4's levels are quantiles of a normal distribution, so it beats FP4 on normal weights."""
    _, reference = load(model_dir, tmp_path, for_training=False)
    original = up_proj(reference).weight.detach()
    errors = {}
    for quant_type in ("nf4", "fp4"):
        _, model = load(model_dir, tmp_path, quantization_bit=4, quantization_type=quant_type)
        weight = up_proj(model).weight
        restored = bnb_functional.dequantize_4bit(weight.data, weight.quant_state)
        errors[quant_type] = (restored - original).abs().mean().item()
    assert 0 < errors["nf4"] < errors["fp4"] < original.abs().mean().item() / 4


def test_compute_dtype_follows_bf16(model_dir, tmp_path):
    _, fp32 = load(model_dir, tmp_path, quantization_bit=4)
    _, bf16 = load(model_dir, tmp_path, quantization_bit=4, bf16=True)
    assert up_proj(fp32).compute_dtype == torch.float32
    assert up_proj(bf16).compute_dtype == torch.bfloat16
    assert bf16.model.norm.weight.dtype == torch.bfloat16, "bf16 keeps unquantized frozen weights in bf16"


def test_8bit_stores_int8_weights_with_row_scales(model_dir, tmp_path):
    _, model = load(model_dir, tmp_path, quantization_bit=8)
    weight = up_proj(model).weight
    assert weight.dtype == torch.int8
    assert weight.SCB.shape == (2 * HIDDEN,)  # one absmax scale per output row (LLM.int8)


def test_hqq_base_trains_lora_and_keeps_its_bits(model_dir, tmp_path):
    config, model = load(model_dir, tmp_path, quantization_bit=3, quantization_method="hqq")
    layer = up_proj(model)
    assert isinstance(layer, HQQLinear) and layer.meta["nbits"] == 3
    assert not isinstance(model.lm_head, HQQLinear)
    packed = layer.W_q.detach().clone()
    model, loss = train_one_step(config, model)
    assert torch.isfinite(torch.tensor(loss))
    assert type(up_proj(model)).__name__ == "HqqLoraLinear"
    assert torch.equal(up_proj(model).base_layer.W_q, packed), "the HQQ weights stay as quantized"
    assert all(p.abs().sum() > 0 for name, p in model.named_parameters() if "lora_B" in name)


def test_a_qlora_adapter_runs_merged_in_full_precision_or_unmerged_on_the_4bit_base(model_dir, tmp_path):
    from peft import PeftModel

    from tunery.train.run import run_training

    config = make_config(model_dir, tmp_path, quantization_bit=4, max_steps=2)
    metrics = run_training(config)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    adapter = str(config.training.output_dir)
    assert (Path(adapter) / "adapter_model.safetensors").is_file()
    _, merged = load(model_dir, tmp_path, for_training=False, adapter_name_or_path=adapter)
    assert type(up_proj(merged)) is torch.nn.Linear, "without quantization_bit: the full-precision base"
    _, quantized = load(model_dir, tmp_path, for_training=False, quantization_bit=4,
                        adapter_name_or_path=adapter)
    assert isinstance(quantized, PeftModel) and isinstance(up_proj(quantized).base_layer, Linear4bit)
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, four_bit = merged(input_ids=ids).logits, quantized(input_ids=ids).logits
    assert (full - four_bit).abs().max() < 0.5, "the same model up to the 4-bit rounding of the base"


@pytest.mark.parametrize("kind", ["full", "freeze"])
def test_full_and_freeze_tuning_on_a_quantized_base_are_refused(model_dir, tmp_path, kind):
    with pytest.raises(ConfigError, match="finetuning_type: lora"):
        load(model_dir, tmp_path, quantization_bit=4, finetuning_type=kind)


@pytest.mark.parametrize(("keys", "message"), [
    ({"quantization_bit": 3}, "bitsandbytes quantizes to 4 or 8 bits"),
    ({"quantization_bit": 7, "quantization_method": "hqq"}, "quantization_bit must be"),
    ({"quantization_bit": 4, "quantization_method": "gptq"}, "already quantized with GPTQ"),
])
def test_bits_that_the_method_cannot_make_are_config_errors(model_dir, tmp_path, keys, message):
    with pytest.raises(ConfigError, match=message):
        make_config(model_dir, tmp_path, **keys)


def test_train_from_scratch_cannot_be_quantized(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="train_from_scratch"):
        load(model_dir, tmp_path, quantization_bit=4, train_from_scratch=True)
