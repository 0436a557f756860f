"""GGUF export round trip: written by Tunery, read back by transformers' GGUF loader, same model."""

import gguf
import pytest
import torch
from exportfakes import SAMPLE, export_config, isolated_copy, logits_of, save_tiny_variant
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tunery.errors import ModelError
from tunery.export import export_model
from tunery.export.gguf_writer import check_gguf_supported

TEXTS = [SAMPLE, "plain text", "  two spaces\nand\ttabs", "数字 2024 ünïcödé", "<|im_end|><|endoftext|>"]


def load_gguf(result, tmp_path):
    """Model and tokenizer from the GGUF file alone (copied away from the safetensors export)."""
    folder = isolated_copy(result.folder / result.gguf_file, tmp_path / "gguf-only")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=result.gguf_file, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=result.gguf_file)


def round_like_gguf(model: torch.nn.Module, kind: str) -> None:
    """Put every matrix through ``kind``'s storage (f16 or q8_0 and back): what the GGUF must hold."""
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                stored = gguf.quants.quantize(param.numpy(), qtype)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(stored, qtype).reshape(param.shape)))


def compare(result, tmp_path, rounded: bool = False):
    """Logits of the merged safetensors export (``rounded`` like the GGUF's storage, or exact)
    and of its GGUF file, and both tokenizers."""
    merged = AutoModelForCausalLM.from_pretrained(result.folder, dtype=torch.float32)
    if rounded:
        round_like_gguf(merged, result.gguf_file.removeprefix("model-").removesuffix(".gguf"))
    tokenizer = AutoTokenizer.from_pretrained(result.folder)
    from_gguf, gguf_tokenizer = load_gguf(result, tmp_path)
    return logits_of(merged, tokenizer), logits_of(from_gguf, gguf_tokenizer), tokenizer, gguf_tokenizer


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "base+lora"])
def test_f16_gguf_reads_back_as_the_same_model(tiny_model, tiny_adapter, tmp_path, with_adapter):
    adapter = tiny_adapter if with_adapter else None
    result = export_model(export_config(tiny_model, tmp_path / "out", adapter, export_gguf="f16"))
    rounded, actual, tokenizer, gguf_tokenizer = compare(result, tmp_path, rounded=True)
    expected, _, _, _ = compare(result, tmp_path)

    # exactly the merged model stored in f16, which is within f16 rounding of the merged model
    torch.testing.assert_close(actual, rounded, atol=1e-5 * rounded.abs().max(), rtol=1e-4)
    assert (actual - expected).abs().max() <= 1e-2 * expected.abs().max()
    assert (actual.argmax(-1) == expected.argmax(-1)).all()
    for text in TEXTS:
        assert gguf_tokenizer.encode(text) == tokenizer.encode(text), text
    assert gguf_tokenizer.eos_token == tokenizer.eos_token == "<|im_end|>"
    assert gguf_tokenizer.pad_token == tokenizer.pad_token
    assert gguf_tokenizer.chat_template == tokenizer.chat_template


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "base+lora"])
def test_q8_0_gguf_stays_close_to_the_merged_model(tiny_model, tiny_adapter, tmp_path, with_adapter):
    adapter = tiny_adapter if with_adapter else None
    result = export_model(export_config(tiny_model, tmp_path / "out", adapter, export_gguf="q8_0"))
    expected, actual, tokenizer, gguf_tokenizer = compare(result, tmp_path)
    rounded, _, _, _ = compare(result, tmp_path, rounded=True)

    # exactly the merged model stored in q8_0 blocks; q8_0 noise moves logits a little, not the ranking
    torch.testing.assert_close(actual, rounded, atol=1e-5 * rounded.abs().max(), rtol=1e-4)
    correlation = torch.corrcoef(torch.stack([actual.flatten(), expected.flatten()]))[0, 1]
    assert correlation > 0.999
    assert (actual - expected).abs().max() <= 0.15 * expected.abs().max()
    assert (actual.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9
    for text in TEXTS:
        assert gguf_tokenizer.encode(text) == tokenizer.encode(text), text


def test_q8_0_file_layout_and_metadata(tiny_model, tmp_path):
    result = export_model(export_config(tiny_model, tmp_path / "out", export_gguf="q8_0"))
    reader = gguf.GGUFReader(result.folder / "model-q8_0.gguf")

    def field(key):
        return reader.get_field(key).contents()

    assert field("general.architecture") == "llama"
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert (field("llama.block_count"), field("llama.embedding_length"), field("llama.context_length")) == (
        2, 32, 256)
    assert (field("llama.attention.head_count"), field("llama.attention.head_count_kv")) == (4, 2)
    assert field("llama.feed_forward_length") == 64
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt2"
    assert len(field("tokenizer.ggml.tokens")) == field("llama.vocab_size") == 259
    types = field("tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and set(types[3:]) == {gguf.TokenType.NORMAL}
    assert field("tokenizer.chat_template").startswith("{% if messages[0]['role'] == 'system' %}")
    kinds = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" in kinds  # the tiny model's head is not tied
    assert "Modelfile" in result.files
    assert "\nFROM ./model-q8_0.gguf\n" in (result.folder / "Modelfile").read_text()


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_other_supported_architectures_round_trip(arch, tmp_path):
    model_dir = save_tiny_variant(tmp_path / arch, arch)
    result = export_model(export_config(model_dir, tmp_path / "out", export_gguf="f16"))
    expected, actual, _, _ = compare(result, tmp_path)
    assert (actual - expected).abs().max() <= 1e-2 * expected.abs().max()


def test_unsupported_architecture_is_refused_before_anything_is_written(tmp_path):
    model_dir = save_tiny_variant(tmp_path / "qwen3", "qwen3")
    with pytest.raises(ModelError, match=r"GGUF export supports Llama-family models.*not Qwen3ForCausalLM"):
        export_model(export_config(model_dir, tmp_path / "out", export_gguf="q8_0"))
    assert not (tmp_path / "out").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["qwen3"]


def test_non_byte_level_tokenizer_is_refused(tiny_model):
    word_level = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    )
    config = AutoModelForCausalLM.from_pretrained(tiny_model).config
    with pytest.raises(ModelError, match="byte-level BPE"):
        check_gguf_supported(config, word_level)
