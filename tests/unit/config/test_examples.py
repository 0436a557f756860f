"""Every shipped example is a valid config whose datasets exist."""

from pathlib import Path

import pytest

from tunery.config import load_config
from tunery.data.registry import resolve_datasets

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert {path.name for path in EXAMPLES} >= {"quickstart.yaml", "pretrain.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_loads_and_names_existing_datasets(path):
    config = load_config(path)
    specs = resolve_datasets(config.data.dataset, config.data.dataset_dir)
    assert [spec.name for spec in specs] == config.data.dataset
    assert all(Path(spec.path).exists() for spec in specs)
