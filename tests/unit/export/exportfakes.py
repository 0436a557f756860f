"""Tiny models, LoRA adapters and helpers for the export tests.

The q/k projections of every tiny model are scaled up so that attention is
sharp: with the default initialisation attention is almost uniform, and a
wrong q/k layout (the GGUF permutation) would change the logits too little to see.
"""

import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from train_tiny import save_tiny_model
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tunery.config import load_config

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SAMPLE = "<|im_start|>user\nWho are you? 12345 héllo 🙂<|im_end|>\n<|im_start|>assistant\nI am"

VARIANTS = {  # architecture name -> (config class, model class); llama is save_tiny_model's own
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def sharpen_attention(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_proj.weight" in name or "k_proj.weight" in name:
                param.mul_(10)


def save_tiny_variant(folder: Path, arch: str = "llama") -> Path:
    """save_tiny_model's tokenizer and shape, as ``arch``, with sharp attention."""
    save_tiny_model(folder)
    llama = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if arch == "llama":
        model = llama
    else:
        config_class, model_class = VARIANTS[arch]
        keys = LlamaConfig().to_dict().keys() & config_class().to_dict().keys()
        keys -= {"architectures", "model_type"}
        shape = {key: getattr(llama.config, key) for key in keys}
        torch.manual_seed(0)
        model = model_class(config_class(**shape))
    sharpen_attention(model)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    model.save_pretrained(folder)
    return folder


def save_lora_adapter(model_dir: Path, folder: Path, seed: int = 1, scale: float = 0.1) -> Path:
    """A LoRA adapter on every linear layer whose B matrices are random (not PEFT's zeros)."""
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)  # the A matrices
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(folder)
    return folder


def export_config(model: Path, export_dir: Path, adapter: Path | None = None, **keys):
    """A RunConfig for exporting ``model`` (+ ``adapter``) to ``export_dir``; ``keys`` are flat YAML keys."""
    flat = {"model_name_or_path": str(model), "template": "chatml", "export_dir": str(export_dir),
            "do_train": False, **keys}
    if adapter is not None:
        flat["adapter_name_or_path"] = str(adapter)
    return load_config(None, [f"{key}={value}" for key, value in flat.items()])


def logits_of(model: torch.nn.Module, tokenizer, text: str = SAMPLE) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0].float()


def isolated_copy(file: Path, folder: Path) -> Path:
    """``file`` alone in ``folder``, so a loader cannot pick up anything else next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(file, folder / file.name)
    return folder
