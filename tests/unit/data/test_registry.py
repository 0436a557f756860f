"""dataset_info.json -> DatasetSpec, file-path inference, and reading files into rows."""

import json
from pathlib import Path

import pytest

from tunery.data.loader import BadRow, read_rows
from tunery.data.registry import BUILTIN_DIR, builtin_info, resolve_dataset, resolve_datasets
from tunery.errors import DataError

PEER = Path(__file__).resolve().parents[3].parent / "shared" / "peer-data"


def write_info(folder: Path, info: dict) -> None:
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")


def test_peer_entries_resolve_with_llamafactory_defaults():
    alpaca, tools, dpo, c4 = resolve_datasets(
        ["alpaca_en_demo", "glaive_toolcall_en_demo", "dpo_en_demo", "c4_demo"], str(PEER)
    )
    assert alpaca.formatting == "alpaca" and alpaca.path == PEER / "alpaca_en_demo.json"
    assert (alpaca.column("prompt"), alpaca.column("query"), alpaca.column("response")) == (
        "instruction", "input", "output")
    assert tools.formatting == "sharegpt" and tools.column("tools") == "tools"
    assert tools.tags["role_tag"] == "from" and tools.tags["user_tag"] == "human"
    assert dpo.ranking and dpo.column("chosen") == "chosen"
    assert c4.column("prompt") == "text"


def test_hub_only_entry_explains_how_to_download():
    with pytest.raises(DataError) as err:
        resolve_dataset("alpaca_en", str(PEER))
    message = str(err.value)
    assert "offline" in message and "llamafactory/alpaca_en" in message
    assert "huggingface-cli download" in message and '"file_name"' in message


@pytest.mark.parametrize("key", ["ms_hub_url", "script_url", "cloud_file_name", "om_hub_url"])
def test_every_remote_kind_is_a_data_error(tmp_path, key):
    write_info(tmp_path, {"remote": {key: "org/data"}})
    with pytest.raises(DataError, match="offline"):
        resolve_dataset("remote", str(tmp_path))


def test_hub_entry_with_a_local_copy_uses_the_file(tmp_path):
    (tmp_path / "local.json").write_text("[]", encoding="utf-8")
    write_info(tmp_path, {"both": {"hf_hub_url": "org/data", "file_name": "local.json"}})
    assert resolve_dataset("both", str(tmp_path)).path == tmp_path / "local.json"


def test_unknown_name_lists_close_names():
    with pytest.raises(DataError) as err:
        resolve_dataset("alpaca_en_dem", str(PEER))
    assert "'alpaca_en_demo'" in str(err.value) and "Unknown dataset" in str(err.value)


def test_names_fall_back_to_builtin_and_builtin_dir_is_exclusive(tmp_path):
    assert resolve_dataset("identity_tunery", str(tmp_path)).path == BUILTIN_DIR / "identity_tunery.json"
    assert resolve_dataset("identity", "builtin").path == BUILTIN_DIR / "identity.json"
    # a dataset_dir entry shadows the built-in one of the same name
    assert resolve_dataset("identity", str(PEER)).path == PEER / "identity.json"
    with pytest.raises(DataError, match="Built-in datasets"):
        resolve_dataset("alpaca_en_demo", "builtin")


def test_builtin_entries_all_resolve():
    specs = resolve_datasets(list(builtin_info()), "builtin")
    assert {spec.name for spec in specs} >= {"identity", "identity_tunery", "instruct_demo", "text_demo",
                                              "toolcall_demo"}
    assert all(spec.path.is_file() for spec in specs)


def test_missing_file_and_typo_attribute_and_media_are_clear(tmp_path):
    write_info(tmp_path, {"gone": {"file_name": "gone.json"},
                          "typo": {"file_name": "x.json", "formating": "x"},
                          "pics": {"file_name": "x.json", "columns": {"images": "images"}}})
    (tmp_path / "x.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="does not exist"):
        resolve_dataset("gone", str(tmp_path))
    with pytest.raises(DataError, match="did you mean 'formatting'"):
        resolve_dataset("typo", str(tmp_path))
    with pytest.raises(DataError, match="text only"):
        resolve_dataset("pics", str(tmp_path))


def test_openai_formatting_has_role_content_tags(tmp_path):
    (tmp_path / "chat.json").write_text("[]", encoding="utf-8")
    write_info(tmp_path, {"chat": {"file_name": "chat.json", "formatting": "openai"}})
    spec = resolve_dataset("chat", str(tmp_path))
    assert spec.column("messages") == "messages"
    tags = spec.tags
    assert (tags["role_tag"], tags["user_tag"], tags["observation_tag"]) == ("role", "user", "tool")


@pytest.mark.parametrize(
    ("row", "formatting", "column", "value"),
    [
        ({"instruction": "a", "input": "", "output": "b", "system": "s"}, "alpaca", "system", "system"),
        ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt", "messages", "conversations"),
        ({"messages": [{"role": "user", "content": "a"}]}, "openai", "messages", "messages"),
        ({"text": "plain"}, "alpaca", "prompt", "text"),
    ],
)
def test_file_path_format_is_inferred_from_the_first_row(tmp_path, row, formatting, column, value):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    spec = resolve_dataset(str(path), "data")
    assert (spec.formatting, spec.column(column)) == (formatting, value)


def test_inferred_ranking_and_uninferable_rows(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"instruction": "q", "chosen": "a", "rejected": "b"}]), encoding="utf-8")
    assert resolve_dataset(str(path), "data").ranking
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"foo": 1}]), encoding="utf-8")
    with pytest.raises(DataError, match="Cannot tell the format"):
        resolve_dataset(str(odd), "data")


def test_file_name_may_be_a_folder_of_one_type(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.jsonl").write_text(json.dumps({"text": f"t{i}"}) + "\n", encoding="utf-8")
    write_info(tmp_path, {"parts": {"file_name": "parts", "columns": {"prompt": "text"}}})
    spec = resolve_dataset("parts", str(tmp_path))
    assert [row["text"] for _, row in read_rows(spec.path)] == ["t0", "t1"]
    (folder / "2.csv").write_text("text\nx\n", encoding="utf-8")
    with pytest.raises(DataError, match="mixes file types"):
        read_rows(spec.path)


def test_bad_json_lines_become_bad_rows_with_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{broken\n\n[1, 2]\n', encoding="utf-8")
    rows = read_rows(path)
    assert rows[0] == (f"{path} line 1", {"text": "ok"})
    assert rows[1][0] == f"{path} line 2" and isinstance(rows[1][1], BadRow)
    assert rows[2][0] == f"{path} line 4" and "not an object" in rows[2][1].reason


def test_broken_json_file_is_a_data_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"a": 1},', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        read_rows(path)


def test_csv_parquet_arrow_and_txt_files_are_read(tmp_path):
    from datasets import Dataset

    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": "a2"}]
    (tmp_path / "d.csv").write_text("instruction,output\nq1,a1\nq2,a2\n", encoding="utf-8")
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    (tmp_path / "d.txt").write_text("first line\n\nsecond line\n", encoding="utf-8")
    for name in ("d.csv", "d.parquet"):
        assert [row for _, row in read_rows(tmp_path / name)] == rows
    assert [row for _, row in read_rows(arrow)] == rows
    lines = [row for _, row in read_rows(tmp_path / "d.txt")]
    assert lines == [{"text": "first line"}, {"text": "second line"}]


def test_split_slices_and_unknown_splits(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(10)), encoding="utf-8")
    assert [row["text"] for _, row in read_rows(path, "train[:3]")] == ["0", "1", "2"]
    assert [row["text"] for _, row in read_rows(path, "train[80%:]")] == ["8", "9"]
    with pytest.raises(DataError, match="only the 'train' split"):
        read_rows(path, "validation")


def test_builtin_identity_variant_is_the_placeholder_set_filled_in():
    templated = json.loads((BUILTIN_DIR / "identity.json").read_text("utf-8"))
    filled = json.loads((BUILTIN_DIR / "identity_tunery.json").read_text("utf-8"))
    assert len(templated) == len(filled)
    assert sum("{{name}}" in row["output"] for row in templated) > 50
    for before, after in zip(templated, filled, strict=True):
        assert "{{" not in json.dumps(after, ensure_ascii=False)
        expected = before["output"].replace("{{name}}", "Tunery Assistant")
        # the author is "the Tunery team" ("The" at a sentence start, "Tunery 团队" in Chinese)
        for author in ("the Tunery team", "The Tunery team", "Tunery 团队"):
            if expected.replace("{{author}}", author) == after["output"]:
                break
        else:
            pytest.fail(f"{after['output']!r} is not {before['output']!r} filled in")


def test_a_file_path_works_even_with_the_builtin_dataset_dir(tmp_path):
    rows = tmp_path / "mine.jsonl"
    rows.write_text('{"instruction": "hi", "output": "hello"}\n')
    spec = resolve_dataset(str(rows), "builtin")
    assert spec.formatting == "alpaca"
    assert Path(spec.path) == rows


def test_a_misspelt_column_or_tag_is_refused_with_a_guess(tmp_path):
    (tmp_path / "d.json").write_text('[{"q": "hi", "a": "yo"}]')
    entry = {"file_name": "d.json", "columns": {"promt": "q", "response": "a"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(DataError, match=r"columns has unknown key 'promt' — did you mean 'prompt'\?"):
        resolve_dataset("d", str(tmp_path))
    entry = {"file_name": "d.json", "formatting": "sharegpt", "tags": {"role_tg": "from"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(DataError, match=r"tags has unknown key 'role_tg' — did you mean 'role_tag'\?"):
        resolve_dataset("d", str(tmp_path))
