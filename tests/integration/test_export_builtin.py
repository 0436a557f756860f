"""Export the built-in SmolLM2-135M-Instruct + a LoRA adapter to safetensors and GGUF q8_0; reload both."""

import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates import get_template
from tunery.export import export_model
from tunery.model.load import resolve_model

pytestmark = pytest.mark.integration

TEXTS = ["Who are you?", "The year 2024 had 366 days.", "  indented\n\tcode()", "ünïcödé 数字 🙂"]


def save_random_lora(base_dir, folder):
    """A LoRA adapter on every linear layer with small random B matrices (PEFT starts them at zero)."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(3)  # the A matrices
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(folder)
    return folder


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits[0].float()


def test_builtin_model_with_lora_exports_safetensors_and_q8_0_gguf(tmp_path):
    base_dir = resolve_model("smollm2-135m-instruct").path
    adapter = save_random_lora(base_dir, tmp_path / "lora")
    config = load_config(None, [
        "model_name_or_path=smollm2-135m-instruct", f"adapter_name_or_path={adapter}",
        f"export_dir={tmp_path / 'merged'}", "export_gguf=q8_0", "do_train=false",
    ])
    result = export_model(config)
    folder = result.folder
    sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
    print("export sizes (bytes):", {name: size for name, size in sizes.items() if size > 1_000_000})

    # the prompt exactly as Tunery renders it for the smollm2 template; the exported tokenizer agrees
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = get_template("smollm2", AutoTokenizer.from_pretrained(base_dir))
    conversation = Conversation([Message(Role.USER, "Who are you?")])
    prompt_ids = template.encode_prompt(tokenizer, conversation)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                             tokenize=False, add_generation_prompt=True)
    assert rendered == tokenizer.decode(prompt_ids)
    ids = torch.tensor([prompt_ids])

    # merged safetensors == base + adapter
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_logits = logits(base, ids)
    with_adapter = logits(PeftModel.from_pretrained(base, adapter).eval(), ids)
    merged_logits = logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), ids)
    print(f"adapter moves logits by up to {(with_adapter - base_logits).abs().max():.3f}; "
          f"merged vs base+adapter max |diff| {(merged_logits - with_adapter).abs().max():.2e}")
    assert (with_adapter - base_logits).abs().max() > 0.5
    torch.testing.assert_close(merged_logits, with_adapter, atol=2e-4, rtol=1e-4)

    # the GGUF alone (llama.cpp/Ollama's file) reads back as the same model and tokenizer
    gguf_dir = tmp_path / "gguf-only"
    gguf_dir.mkdir()
    shutil.copy2(folder / result.gguf_file, gguf_dir / result.gguf_file)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=result.gguf_file)
    for text in TEXTS:
        assert gguf_tokenizer.encode(text) == tokenizer.encode(text), text
    from_gguf = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=result.gguf_file, dtype=torch.float32
    )
    gguf_logits = logits(from_gguf, ids)
    correlation = torch.corrcoef(torch.stack([gguf_logits.flatten(), merged_logits.flatten()]))[0, 1]
    agreement = (gguf_logits.argmax(-1) == merged_logits.argmax(-1)).float().mean()
    print(f"q8_0 vs merged: max |diff| {(gguf_logits - merged_logits).abs().max():.3f} "
          f"of {merged_logits.abs().max():.1f}, correlation {correlation:.5f}, "
          f"argmax agreement {agreement:.3f}")
    assert correlation > 0.995
    assert agreement >= 0.9

    modelfile = (folder / "Modelfile").read_text()
    assert "\nFROM ./model-q8_0.gguf\n" in modelfile
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."
    assert f'\nSYSTEM """{system}"""\n' in modelfile
    assert sizes["model-q8_0.gguf"] < 0.35 * sizes["model.safetensors"]  # 8.5 bits against fp32
