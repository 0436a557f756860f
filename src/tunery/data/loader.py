"""Read a dataset's files into raw rows, each tagged with where it came from.

JSON and JSON Lines are read here rather than through ``datasets.load_dataset``
so that a broken line becomes one skipped row (``file line 12: not valid JSON``)
instead of a failed run, and rows whose columns vary in type still load. CSV and
Parquet go through pyarrow and Arrow files through ``datasets`` (memory-mapped),
the same readers ``datasets`` uses, without copying anything into its cache.
Plain ``.txt`` files give one row ``{"text": line}`` per non-empty line.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.errors import DataError

FILE_TYPES = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "arrow": "arrow",
              "txt": "text"}


@dataclass(frozen=True)
class BadRow:
    """A row that could not even be read (e.g. a JSON Lines line that is not JSON)."""

    reason: str


Row = tuple[str, Any]  # (where, row dict or BadRow)


def data_files(path: Path) -> list[Path]:
    """The files of a dataset: the file itself, or every file of one type in a folder."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"Dataset folder {path} holds no files; put the data files in it.")
    else:
        raise DataError(f"Dataset file {path} does not exist.")
    types = {file_type(file) for file in files}
    if len(types) > 1:
        kinds = ", ".join(sorted(types))
        raise DataError(f"Dataset folder {path} mixes file types ({kinds}); keep one type.")
    return files


def file_type(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FILE_TYPES:
        raise DataError(
            f"Cannot read {path}: unknown file type '.{suffix}'; use one of "
            f"{', '.join('.' + ext for ext in FILE_TYPES)}."
        )
    return FILE_TYPES[suffix]


def read_rows(path: Path, split: str = "train") -> list[Row]:
    """All rows of a dataset file or folder, then the ``split`` slice (``train``, ``train[:100]``)."""
    rows: list[Row] = []
    for file in data_files(path):
        rows.extend(read_file(file))
    return slice_split(rows, split, path)


def read_file(path: Path) -> list[Row]:
    reader = {"json": read_json, "csv": read_table, "parquet": read_table, "arrow": read_arrow,
              "text": read_text}[file_type(path)]
    return reader(path)


def read_json(path: Path) -> list[Row]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        return read_json_lines(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":
            raise DataError(
                f"{path} is not valid JSON (line {err.lineno}: {err.msg}); fix the file."
            ) from None
        return read_json_lines(path, text)  # a .json file holding JSON Lines, as `datasets` accepts
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of rows (objects).")
    return [(f"{path} row {i + 1}", check_object(row)) for i, row in enumerate(data)]


def read_json_lines(path: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path} line {number}", check_object(json.loads(line))))
        except json.JSONDecodeError as err:
            rows.append((f"{path} line {number}", BadRow(f"not valid JSON ({err.msg})")))
    return rows


def check_object(row: Any) -> Any:
    return row if isinstance(row, dict) else BadRow(f"row is a {type(row).__name__}, not an object")


def read_table(path: Path) -> list[Row]:
    try:
        if path.suffix.lower() == ".csv":
            from pyarrow import csv

            table = csv.read_csv(path)
        else:
            from pyarrow import parquet

            table = parquet.read_table(path)
    except Exception as err:  # pyarrow raises several types; all mean "unreadable file"
        raise DataError(f"Cannot read {path}: {err}") from None
    return [(f"{path} row {i + 1}", row) for i, row in enumerate(table.to_pylist())]


def read_arrow(path: Path) -> list[Row]:
    from datasets import Dataset

    try:
        dataset = Dataset.from_file(str(path))
    except Exception as err:  # a non-Arrow file can fail in several ways
        raise DataError(f"Cannot read {path} as an Arrow file: {err}") from None
    return [(f"{path} row {i + 1}", row) for i, row in enumerate(dataset.to_list())]


def read_text(path: Path) -> list[Row]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [(f"{path} line {i + 1}", {"text": line}) for i, line in enumerate(lines) if line.strip()]


def first_row(path: Path) -> dict:
    """The first readable row of a file or folder (used to infer its format)."""
    for _, row in read_file(data_files(path)[0]):
        if isinstance(row, dict):
            return row
    raise DataError(f"{path} holds no readable rows.")


SPLIT_SLICE = re.compile(r"^train\[(-?\d*)(%?):(-?\d*)(%?)\]$")


def slice_split(rows: list[Row], split: str, path: Path) -> list[Row]:
    """Local files have one split, ``train``; ``train[a:b]`` (counts or percents) slices it."""
    if split == "train":
        return rows
    match = SPLIT_SLICE.match(split.replace(" ", ""))
    if not match:
        raise DataError(
            f"Split '{split}' of {path}: local files have only the 'train' split (slices like "
            "'train[:100]' or 'train[10%:]' work); remove `split` or split the file."
        )
    start, start_pct, stop, stop_pct = match.groups()
    return rows[to_index(start, start_pct, len(rows)):to_index(stop, stop_pct, len(rows))]


def to_index(value: str, percent: str, total: int) -> int | None:
    if not value:
        return None
    return int(value) * total // 100 if percent else int(value)
