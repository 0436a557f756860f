"""load_tokenizer / load_model: sources, dtypes, attention, remote code, RoPE, vocabulary."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tunery.config.schema import FinetuningArgs
from tunery.errors import ConfigError, ModelError
from tunery.model.adapters import apply_finetuning
from tunery.model.aliases import default_template_for, find_alias, known_aliases
from tunery.model.attention import ATTENTION_NAME
from tunery.model.load import load_model, load_tokenizer, resolve_model


def test_missing_model_names_it_and_lists_aliases(tmp_path):
    with pytest.raises(ModelError) as caught:
        resolve_model(str(tmp_path / "no-such-model"))
    message = str(caught.value)
    assert "no-such-model" in message
    assert "smollm2-135m-instruct" in message
    assert "offline" in message


def test_plain_file_is_rejected(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"weights\.bin"):
        resolve_model(str(weights))


def test_directory_resolves_to_itself(model_dir):
    source = resolve_model(str(model_dir))
    assert source.path == model_dir.resolve()
    assert source.alias is None and not source.converted


@pytest.mark.parametrize(
    "name", ["smollm2-135m-instruct", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]
)
def test_alias_names_and_template(name):
    alias = find_alias(name)
    assert alias is not None and alias.name == "smollm2-135m-instruct"
    assert alias.gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default_template_for(name) == "smollm2"
    assert "smollm2-135m-instruct" in known_aliases()


def test_no_default_template_for_other_models(model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    assert default_template_for(str(model_dir)) is None
    assert default_template_for("meta-llama/Llama-3-8B") is None
    cached = tmp_path / "home" / "models" / "smollm2-135m-instruct"
    assert default_template_for(str(cached)) == "smollm2"


def test_tokenizer_pads_on_the_right(run_config):
    tokenizer = load_tokenizer(run_config().model)
    assert tokenizer.padding_side == "right"
    assert tokenizer.eos_token == "<eos>"


def test_cpu_defaults_to_fp32_and_sdpa(run_config, tokenizer):
    model = load_model(run_config(), tokenizer, for_training=False)
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_bf16_training_keeps_frozen_weights_in_bf16(run_config, tokenizer):
    config = run_config(training={"bf16": True})
    model = load_model(config, tokenizer, for_training=True)
    assert model.dtype == torch.bfloat16
    assert model.training and model.config.use_cache is False
    model = apply_finetuning(model, config.finetuning)
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert dtypes == {torch.float32} and frozen == {torch.bfloat16}


def test_full_finetuning_loads_fp32(run_config, tokenizer):
    config = run_config(training={"bf16": True}, finetuning={"finetuning_type": "full"})
    model = load_model(config, tokenizer, for_training=True)
    assert model.dtype == torch.float32


def test_fp16_on_cpu_is_a_config_error(run_config, tokenizer):
    with pytest.raises(ConfigError, match="fp16"):
        load_model(run_config(training={"fp16": True}), tokenizer, for_training=True)


@pytest.mark.parametrize(
    ("flash_attn", "expected"), [("eager", "eager"), ("disabled", "eager"), ("sdpa", "sdpa")]
)
def test_flash_attn_choices(run_config, tokenizer, flash_attn, expected):
    model = load_model(run_config(model={"flash_attn": flash_attn}), tokenizer, for_training=False)
    assert model.config._attn_implementation == expected


def test_fa2_without_package_is_a_clear_error(run_config, tokenizer):
    with pytest.raises(ModelError, match="flash-attn"):
        load_model(run_config(model={"flash_attn": "fa2"}), tokenizer, for_training=True)


def test_attention_override_selects_per_example_attention(run_config, tokenizer, batch):
    model = load_model(run_config(), tokenizer, for_training=True, attn_implementation=ATTENTION_NAME)
    assert model.config._attn_implementation == ATTENTION_NAME
    assert torch.isfinite(model(**batch).loss)


def write_remote_code_model(folder) -> None:
    """Turn a saved LLaMA folder into one whose classes live in its own modeling file."""
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tiny_remote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_tiny.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_tiny.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class TinyRemoteConfig(LlamaConfig):\n    model_type = 'tiny_remote'\n\n\n"
        "class TinyRemoteForCausalLM(LlamaForCausalLM):\n    config_class = TinyRemoteConfig\n"
    )


def test_remote_code_needs_trust_remote_code(run_config, tokenizer, model_dir):
    write_remote_code_model(model_dir)
    with pytest.raises(ModelError, match="trust_remote_code: true"):
        load_model(run_config(), tokenizer, for_training=False)
    model = load_model(run_config(model={"trust_remote_code": True}), tokenizer, for_training=False)
    assert type(model).__name__ == "TinyRemoteForCausalLM"


# RoPE scaling: tests/unit/model/test_rope_scaling.py


def test_train_from_scratch_ignores_the_weights(run_config, tokenizer, model_dir):
    pretrained = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(123)
    scratch = load_model(run_config(model={"train_from_scratch": True}), tokenizer, for_training=True)
    assert not torch.equal(scratch.model.embed_tokens.weight, pretrained.model.embed_tokens.weight)
    assert scratch.config.hidden_size == pretrained.config.hidden_size


def test_vocabulary_grows_with_the_tokenizer(run_config, tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool>", "<obs>"]})
    config = run_config()
    model = load_model(config, tokenizer, for_training=True)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 66
    assert model.get_output_embeddings().weight.shape[0] == 66
    assert config.finetuning.additional_target == ["embed_tokens", "lm_head"]
    model = apply_finetuning(model, config.finetuning)
    assert any("embed_tokens.modules_to_save" in n for n, p in model.named_parameters() if p.requires_grad)


def test_inference_merges_configured_adapter(run_config, tokenizer, tmp_path, batch):
    config = run_config()
    peft_model = apply_finetuning(load_model(config, tokenizer, for_training=True), FinetuningArgs())
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    peft_model.eval().save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = peft_model(input_ids=batch["input_ids"]).logits

    config.model.adapter_name_or_path = [str(tmp_path / "adapter")]
    model = load_model(config, tokenizer, for_training=False)
    assert not isinstance(model, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits, expected)


def test_training_continues_the_configured_adapter(run_config, tokenizer, tmp_path):
    config = run_config()
    first = apply_finetuning(load_model(config, tokenizer, for_training=True), FinetuningArgs(lora_rank=2))
    first.save_pretrained(tmp_path / "adapter")
    config.model.adapter_name_or_path = [str(tmp_path / "adapter")]
    model = load_model(config, tokenizer, for_training=True)
    model = apply_finetuning(model, config.finetuning, config.model.adapter_name_or_path)
    assert isinstance(model, PeftModel) and model.peft_config["default"].r == 2


def test_a_folder_that_is_not_a_model_is_explained(tmp_path):
    from tunery.model.load import resolve_model

    with pytest.raises(ModelError, match=r"folder without config\.json"):
        resolve_model(str(tmp_path))
