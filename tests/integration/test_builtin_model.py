"""The built-in SmolLM2-135M-Instruct: alias -> GGUF -> cached safetensors -> same model.

Uses a private $TUNERY_HOME so the first load really converts, whatever the
machine's own cache holds.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.config.schema import RunConfig
from tunery.model.aliases import default_template_for, find_alias
from tunery.model.gguf import SOURCE_RECORD
from tunery.model.load import load_model, load_tokenizer, resolve_model

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_builtin_alias_converts_once_and_matches_the_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    alias = find_alias("smollm2-135m-instruct")
    assert default_template_for("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2"

    first = resolve_model("SmolLM2-135M-Instruct")
    assert first.converted and first.alias is alias
    assert first.path == tmp_path / "home" / "models" / "smollm2-135m-instruct"
    for name in ("model.safetensors", "config.json", "tokenizer.json", SOURCE_RECORD):
        assert (first.path / name).is_file(), name
    assert "quantization_config" not in (first.path / "config.json").read_text()
    weights_mtime = (first.path / "model.safetensors").stat().st_mtime_ns

    for name in ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        again = resolve_model(name)
        assert again.path == first.path and not again.converted
    assert (first.path / "model.safetensors").stat().st_mtime_ns == weights_mtime

    config = RunConfig()  # the default model is the built-in alias
    tokenizer = load_tokenizer(config.model)
    cached = load_model(config, tokenizer, for_training=False)
    assert not resolve_model(config.model.model_name_or_path).converted
    assert cached.dtype == torch.float32

    folder, filename = str(alias.gguf_path().parent), alias.filename
    gguf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == gguf_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert "You are a helpful AI assistant named SmolLM" in prompt
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert torch.equal(ids, gguf_tokenizer(prompt, return_tensors="pt").input_ids)

    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        torch.testing.assert_close(cached(input_ids=ids).logits, expected, rtol=0, atol=0)
