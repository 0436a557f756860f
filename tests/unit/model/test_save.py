"""save_trained: adapter or full weights, the right dtypes, atomic replacement."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.model.adapters import apply_finetuning
from tunery.model.load import load_model
from tunery.model.save import save_trained


def saved_dtypes(path) -> set[torch.dtype]:
    with safe_open(str(path), framework="pt") as handle:
        return {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118 (not a dict)


def perturb_lora(model) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)


def test_lora_adapter_from_bf16_base(run_config, tokenizer, model_dir, tmp_path, batch):
    config = run_config(training={"bf16": True})
    model = apply_finetuning(load_model(config, tokenizer, for_training=True), config.finetuning)
    perturb_lora(model)
    out = save_trained(model, tokenizer, tmp_path / "out", config)

    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names and not any(n.startswith(".saving") for n in names)
    assert saved_dtypes(out / "adapter_model.safetensors") == {torch.float32}
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir.resolve())
    assert AutoTokenizer.from_pretrained(out).eos_token == "<eos>"

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    fresh = PeftModel.from_pretrained(base, out).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=batch["input_ids"]).logits.float(),
            model(input_ids=batch["input_ids"]).logits.float(),
            rtol=0.0, atol=2e-2,
        )


def test_full_weights_saved_in_the_checkpoint_dtype(run_config, tokenizer, tmp_path):
    config = run_config(training={"bf16": True}, finetuning={"finetuning_type": "full"})
    model = apply_finetuning(load_model(config, tokenizer, for_training=True), config.finetuning)
    assert model.dtype == torch.float32  # trained in fp32 ...
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    out = save_trained(model, tokenizer, tmp_path / "out", config)

    assert saved_dtypes(out / "model.safetensors") == {torch.bfloat16}  # ... saved like the source
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert model.dtype == torch.float32  # the live model keeps training in fp32
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(
        reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight.detach().to(torch.bfloat16)
    )


def test_tied_embeddings_survive_a_dtype_cast(tokenizer, tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
        tie_word_embeddings=True, dtype="bfloat16",
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.dtype = torch.bfloat16  # as if loaded from a bf16 checkpoint, trained in fp32
    out = save_trained(model, tokenizer, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight.detach().to(torch.bfloat16))


def test_freeze_saves_full_weights(run_config, tokenizer, tmp_path):
    config = run_config(finetuning={"finetuning_type": "freeze", "freeze_trainable_layers": 1})
    model = apply_finetuning(load_model(config, tokenizer, for_training=True), config.finetuning)
    out = save_trained(model, tokenizer, tmp_path / "out", config)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()


def test_failed_save_leaves_previous_output_intact(run_config, tokenizer, tmp_path, monkeypatch):
    config = run_config()
    model = apply_finetuning(load_model(config, tokenizer, for_training=True), config.finetuning)
    out = save_trained(model, tokenizer, tmp_path / "out", config)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    perturb_lora(model)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_trained(model, tokenizer, out, config)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same files, same bytes, no temp dir


def test_new_kind_of_save_removes_the_old_weights(run_config, tokenizer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "trainer_log.jsonl").write_text("{}\n")  # other run files stay
    full = run_config(finetuning={"finetuning_type": "full"})
    save_trained(apply_finetuning(load_model(full, tokenizer, True), full.finetuning), tokenizer, out, full)
    assert (out / "model.safetensors").exists()

    lora = run_config()
    save_trained(apply_finetuning(load_model(lora, tokenizer, True), lora.finetuning), tokenizer, out, lora)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_log.jsonl"} <= names
    assert not names & {"model.safetensors", "config.json"}


def test_wrapped_model_is_unwrapped(run_config, tokenizer, tmp_path):
    config = run_config()
    model = apply_finetuning(load_model(config, tokenizer, for_training=True), config.finetuning)
    out = save_trained(torch.compile(model), tokenizer, tmp_path / "out", config)
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("base_model.model.") for key in keys)
