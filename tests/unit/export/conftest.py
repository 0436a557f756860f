"""Session-wide tiny model and LoRA adapter for the export tests (built once, read-only)."""

from pathlib import Path

import pytest
from exportfakes import save_lora_adapter, save_tiny_variant


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_variant(tmp_path_factory.mktemp("export-model") / "tiny")


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_model) -> Path:
    return save_lora_adapter(tiny_model, tmp_path_factory.mktemp("export-adapter") / "lora")
