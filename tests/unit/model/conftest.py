"""Tiny models and a tiny tokenizer built in memory, for the model-layer tests."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from tunery.config.schema import RunConfig

VOCAB_SIZE = 64


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: <pad>, <eos>, <unk> and 61 made-up words."""
    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(VOCAB_SIZE - 3)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def llama_config(**overrides) -> LlamaConfig:
    settings = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": VOCAB_SIZE, "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }
    return LlamaConfig(**(settings | overrides))


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture
def tiny_llama():
    """A fresh 2-layer LLaMA (fp32, seeded) built from a config."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(llama_config()).eval()


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    """A local Hugging Face model folder (weights in bf16, as most checkpoints are) with a tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(llama_config(), dtype=torch.bfloat16)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def run_config(model_dir):
    """A RunConfig pointing at ``model_dir``; tests adjust sections with ``model_copy``."""

    def make(**sections) -> RunConfig:
        config = RunConfig()
        config.model.model_name_or_path = str(model_dir)
        for section, values in sections.items():
            for key, value in values.items():
                setattr(getattr(config, section), key, value)
        return config

    return make


@pytest.fixture
def batch() -> dict:
    """A fixed batch of token ids with labels (the model's own shifted loss)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB_SIZE, (2, 12), generator=generator)
    return {"input_ids": ids, "labels": ids.clone()}
