"""The `tunery data check` report: counts, reasons, lengths, and learned text told apart."""

import json

import pytest
from datafakes import EOS, CharTokenizer, FakeTemplate, ids

from tunery.config.schema import RunConfig
from tunery.data.check import check_data, format_report, iter_json_lines, render_example, run_check
from tunery.data.pipeline import prepare_data


@pytest.fixture(autouse=True)
def tunery_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))


@pytest.fixture
def cfg(tmp_path) -> RunConfig:
    rows = [
        {"instruction": "hi", "output": "yo"},
        {"instruction": "long " * 10, "output": "ok"},
        {"instruction": "no answer"},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json"}}), encoding="utf-8")
    config = RunConfig()
    config.data.dataset = ["d"]
    config.data.dataset_dir = str(tmp_path)
    config.data.cutoff_len = 20
    return config


def test_render_example_groups_learned_and_prompt_tokens():
    input_ids = ids("U:a") + ids("A:b") + [EOS]
    labels = [-100] * 3 + ids("A:b") + [EOS]
    example = render_example(input_ids, labels, CharTokenizer())
    assert example.segments == [("U:a", False), ("A:b</s>", True)]
    assert (example.num_tokens, example.num_learned) == (7, 4)


def test_check_report_has_counts_reasons_lengths_and_examples(cfg, tmp_path):
    report = check_data(cfg, CharTokenizer(), FakeTemplate(), num_examples=5)
    dataset = report.data.datasets[0]
    assert (dataset.valid, dataset.skipped) == (2, 1)
    assert dataset.reasons == [f"{tmp_path / 'd.json'} row 3: response column 'output' is missing"]
    assert report.data.lengths == {"p50": 9, "p90": 57, "p99": 57, "max": 57}
    assert report.data.truncated == 1
    assert len(report.examples) == 2
    assert report.examples[0].segments == [("U:hi", False), ("A:yo</s>", True)]
    text = format_report(report)
    assert "2 valid, 1 skipped of 3 rows" in text and "row 3: response column 'output' is missing" in text
    assert "p50 9, p90 57, p99 57, max 57" in text and "1 examples (truncated to fit)" in text
    assert "U:hi[[A:yo</s>]]" in text and "\033[" not in text
    coloured = format_report(report, color=True)
    assert "\033[32mA:yo</s>\033[0m" in coloured and "[[" not in coloured
    assert json.dumps(report.to_dict())  # serialisable for a --json summary


def test_packed_rows_are_rendered_and_dumped_per_example(cfg):
    cfg.data.packing = True
    cfg.data.cutoff_len = 70  # both examples (57 and 9 tokens) fit one row
    report = check_data(cfg, CharTokenizer(), FakeTemplate(), num_examples=5)
    assert report.data.packed and report.data.num_rows == 1 and len(report.examples) == 2
    prepared = prepare_data(cfg, CharTokenizer(), FakeTemplate())
    lines = [json.loads(line) for line in iter_json_lines(prepared)]
    assert len(lines) == 2
    assert {tuple(line["input_ids"]) for line in lines} >= {tuple(ids("U:hi") + ids("A:yo") + [EOS])}
    assert all(len(line["input_ids"]) == len(line["labels"]) for line in lines)


def test_run_check_prints_the_report_or_json_lines(cfg):
    printed: list[str] = []
    run_check(cfg, show=1, tokenizer=CharTokenizer(), template=FakeTemplate(), write=printed.append)
    assert len(printed) == 1 and "Example 1:" in printed[0] and "Example 2:" not in printed[0]
    printed.clear()
    run_check(cfg, as_json=True, tokenizer=CharTokenizer(), template=FakeTemplate(), write=printed.append)
    assert [json.loads(line)["input_ids"][:4] for line in printed] == [ids("U:hi"), ids("U:lo")]


def test_examples_with_nothing_learned_are_counted_and_flagged(cfg):
    report = check_data(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"cutoff_len": 3})}),
        CharTokenizer(),
        FakeTemplate(),
    )
    assert report.nothing_learned >= 1
    assert "have no learned tokens and teach nothing" in format_report(report)
