"""prepare_data end to end on small files: counts, skipped rows, caching, splits, packing."""

import json
from pathlib import Path

import pytest
from datafakes import EOS, CharTokenizer, FakeTemplate, ids

from tunery.config.schema import RunConfig
from tunery.data import encode, pipeline
from tunery.data.pipeline import prepare_data
from tunery.errors import ConfigError, DataError

ROWS = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(10)]


@pytest.fixture(autouse=True)
def tunery_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))


def write_dataset(folder: Path, name: str, rows, info: dict | None = None, suffix: str = ".json") -> Path:
    path = folder / f"{name}{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows), "utf-8")
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    info_path = folder / "dataset_info.json"
    registry = json.loads(info_path.read_text("utf-8")) if info_path.exists() else {}
    registry[name] = {"file_name": path.name, **(info or {})}
    info_path.write_text(json.dumps(registry), encoding="utf-8")
    return path


def config(folder: Path, dataset="demo", **data) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset = [dataset] if isinstance(dataset, str) else dataset
    cfg.data.dataset_dir = str(folder)
    cfg.data.cutoff_len = data.pop("cutoff_len", 64)
    for key, value in data.items():
        target = cfg.finetuning if key == "stage" else cfg.training if key == "seed" else cfg.data
        setattr(target, key, value)
    return cfg


def prepare(cfg, template=None):
    return prepare_data(cfg, CharTokenizer(), template or FakeTemplate())


def test_sft_rows_are_encoded_one_per_conversation(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    prepared = prepare(config(tmp_path))
    assert len(prepared.train) == 10 and prepared.eval is None
    assert prepared.train.column_names == ["input_ids", "labels"]
    assert prepared.train[0]["input_ids"] == ids("U:q0") + ids("A:a0") + [EOS]
    assert prepared.train[0]["labels"] == [-100] * 4 + ids("A:a0") + [EOS]
    report = prepared.report
    assert (report.datasets[0].valid, report.datasets[0].skipped, report.num_rows) == (10, 0, 10)
    assert report.lengths["max"] == 9 and report.truncated == 0 and report.source == "built"


def test_bad_rows_are_skipped_and_named_by_file_and_row(tmp_path):
    lines = [json.dumps(ROWS[0]) + "\n", "{oops\n", json.dumps({"instruction": "q"}) + "\n",
             json.dumps(ROWS[1]) + "\n"]
    path = write_dataset(tmp_path, "demo", lines, suffix=".jsonl")
    report = prepare(config(tmp_path)).report.datasets[0]
    assert (report.rows, report.valid, report.skipped) == (4, 2, 2)
    assert report.reasons[0].startswith(f"{path} line 2: not valid JSON")
    assert report.reasons[1] == f"{path} line 3: response column 'output' is missing"


def test_a_dataset_without_valid_rows_is_a_data_error(tmp_path):
    write_dataset(tmp_path, "demo", [{"text": "just text"}], info={"columns": {"prompt": "text"}})
    expected = r"no usable rows.*row 1: response column 'output' is missing.*stage: pt"
    with pytest.raises(DataError, match=expected):
        prepare(config(tmp_path))


def test_second_call_hits_the_cache(tmp_path, monkeypatch):
    write_dataset(tmp_path, "demo", ROWS)
    calls = []
    original = encode.encode_sft_batch

    def counting(batch, **kwargs):
        calls.append(len(batch["raw"]))
        return original(batch, **kwargs)

    monkeypatch.setattr(pipeline, "encode_sft_batch", counting)
    first = prepare(config(tmp_path))
    assert calls and first.report.source == "built"
    calls.clear()
    second = prepare(config(tmp_path))
    assert calls == [] and second.report.source == "cache"
    assert second.train["input_ids"] == first.train["input_ids"]
    prepare(config(tmp_path, overwrite_cache=True))
    assert calls  # overwrite_cache rebuilds


def test_cache_is_invalidated_by_files_config_and_template(tmp_path):
    path = write_dataset(tmp_path, "demo", ROWS)
    assert prepare(config(tmp_path)).report.source == "built"
    path.write_text(json.dumps(ROWS[:3]), encoding="utf-8")
    changed = prepare(config(tmp_path))
    assert (changed.report.source, len(changed.train)) == ("built", 3)
    assert prepare(config(tmp_path, cutoff_len=32)).report.source == "built"
    assert prepare(config(tmp_path), FakeTemplate(default_system="S")).report.source == "built"
    assert prepare(config(tmp_path)).report.source == "cache"


def test_tokenized_path_is_saved_then_loaded_without_the_data(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    saved = tmp_path / "tokenized"
    first = prepare(config(tmp_path, tokenized_path=str(saved)))
    assert (saved / "report.json").is_file()
    again = prepare(config(tmp_path, dataset="does-not-exist", tokenized_path=str(saved)))
    assert again.report.source == "tokenized_path" and again.train["labels"] == first.train["labels"]


def test_max_samples_and_num_samples(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    write_dataset(tmp_path, "more", ROWS[:4], info={"num_samples": 6})
    prepared = prepare(config(tmp_path, dataset=["demo", "more"], max_samples=5))
    assert [d.rows for d in prepared.report.datasets] == [5, 5]
    unlimited = prepare(config(tmp_path, dataset="more"))
    assert unlimited.report.datasets[0].rows == 6  # 4 rows drawn without, 2 with replacement
    decoded = {bytes(x for x in row if x > 31).decode() for row in unlimited.train["input_ids"]}
    assert len(decoded) == 4


def test_val_size_fraction_and_count_are_seeded(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    fraction = prepare(config(tmp_path, val_size=0.2))
    assert (len(fraction.train), len(fraction.eval)) == (8, 2)
    count = prepare(config(tmp_path, val_size=3))
    assert (len(count.train), len(count.eval)) == (7, 3)
    again = prepare(config(tmp_path, val_size=3, overwrite_cache=True))
    assert again.eval["input_ids"] == count.eval["input_ids"]
    with pytest.raises(ConfigError, match="val_size"):
        prepare(config(tmp_path, val_size=10))


def test_eval_dataset_is_encoded_separately(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    write_dataset(tmp_path, "held", ROWS[:2])
    prepared = prepare(config(tmp_path, eval_dataset=["held"]))
    assert (len(prepared.train), len(prepared.eval)) == (10, 2)
    assert prepared.report.eval_datasets[0].name == "held"
    with pytest.raises(ConfigError, match="val_size"):
        prepare(config(tmp_path, eval_dataset=["held"], val_size=0.1))


def test_sft_packing_rows_carry_seq_lens(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    prepared = prepare(config(tmp_path, packing=True, cutoff_len=30))
    rows = prepared.train
    assert "seq_lens" in rows.column_names
    assert sum(len(s) for s in rows["seq_lens"]) == 10
    assert all(len(r["input_ids"]) == sum(r["seq_lens"]) <= 30 for r in rows)
    assert sorted(t for r in rows["input_ids"] for t in r) == sorted(
        t for i in range(10) for t in ids(f"U:q{i}") + ids(f"A:a{i}") + [EOS])


def test_pt_chunks_texts_and_truncates_without_packing(tmp_path):
    texts = [{"text": "abcdef"}, {"text": "ghij"}]
    write_dataset(tmp_path, "demo", texts, info={"columns": {"prompt": "text"}})
    packed = prepare(config(tmp_path, stage="pt", cutoff_len=4))
    assert packed.train["input_ids"] == [ids("abcd"), [*ids("ef"), EOS, ord("g")], [*ids("hij"), EOS]]
    assert packed.train["seq_lens"] == [[4], [3, 1], [4]]
    assert packed.train["labels"] == packed.train["input_ids"]
    plain = prepare(config(tmp_path, stage="pt", cutoff_len=4, packing=False))
    assert plain.train["input_ids"] == [ids("abcd"), ids("ghij")]
    assert plain.report.truncated == 2


def test_ranking_datasets_are_refused_for_sft(tmp_path):
    rows = [{"instruction": "q", "chosen": "a", "rejected": "b"}]
    write_dataset(tmp_path, "demo", rows, info={"ranking": True, "columns": {"chosen": "chosen",
                                                                             "rejected": "rejected"}})
    with pytest.raises(DataError, match="ranking dataset"):
        prepare(config(tmp_path))


def test_option_conflicts_are_config_errors(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    with pytest.raises(ConfigError, match="train_on_prompt"):
        prepare(config(tmp_path, train_on_prompt=True), FakeTemplate(efficient_eos=True))
    with pytest.raises(ConfigError, match="No dataset"):
        prepare(config(tmp_path, dataset=[]))


def test_default_system_fills_rows_without_one(tmp_path):
    write_dataset(tmp_path, "demo", ROWS[:1])
    prepared = prepare(config(tmp_path, default_system="Hi"))
    assert prepared.train[0]["input_ids"][:7] == ids("S:HiU:q")


def test_workers_give_the_same_rows(tmp_path):
    write_dataset(tmp_path, "demo", ROWS)
    serial = prepare(config(tmp_path))
    parallel = prepare(config(tmp_path, preprocessing_num_workers=2, preprocessing_batch_size=3,
                              overwrite_cache=True))
    assert parallel.train["input_ids"] == serial.train["input_ids"]
    assert parallel.train["labels"] == serial.train["labels"]


def test_builtin_demo_datasets_encode_without_skipping():
    cfg = RunConfig()
    cfg.data.dataset = ["identity", "identity_tunery", "instruct_demo", "toolcall_demo"]
    cfg.data.dataset_dir = "builtin"
    report = prepare(cfg).report
    assert all(d.skipped == 0 and d.valid == d.rows for d in report.datasets)
    sizes = {d.name: d.rows for d in report.datasets}
    assert 60 <= sizes["identity"] == sizes["identity_tunery"] <= 100
    assert 100 <= sizes["instruct_demo"] <= 200 and sizes["toolcall_demo"] >= 10
    cfg.data.dataset = ["text_demo"]
    cfg.finetuning.stage = "pt"
    assert prepare(cfg).report.datasets[0].skipped == 0
    for stage, name in (("dpo", "preference_demo"), ("kto", "kto_demo")):
        cfg.data.dataset, cfg.finetuning.stage = [name], stage
        report = prepare(cfg).report.datasets[0]
        assert report.skipped == 0 and report.rows >= 30


def test_pt_on_a_dataset_without_a_text_column_hints_at_columns(tmp_path):
    write_dataset(tmp_path, "demo", [{"text": "plain"}])  # no "columns": prompt defaults to instruction
    with pytest.raises(DataError, match=r"prompt column 'instruction' is missing.*\"prompt\""):
        prepare(config(tmp_path, stage="pt"))


def test_a_llamafactory_tokenized_folder_loads_with_only_row_columns(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"input_ids": [[5, 6]], "attention_mask": [[1, 1]], "labels": [[-100, 6]]}
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "lf"))
    prepared = prepare(config(tmp_path, tokenized_path=str(tmp_path / "lf")))
    assert prepared.train.column_names == ["input_ids", "labels"] and prepared.eval is None


def test_tokenized_path_that_is_a_file_is_refused(tmp_path):
    from tunery.config.load import build_config

    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    config = build_config({"dataset": "identity", "dataset_dir": "builtin", "tokenized_path": str(a_file)})
    with pytest.raises(ConfigError, match=r"tokenized_path .* is a file"):
        prepare_data(config, None, None)
