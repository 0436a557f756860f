"""Convert MMLU, C-Eval or CMMLU as downloaded into a Tunery benchmark task folder.

    python -m tunery.evaluation.convert SOURCE DEST [--mapping mapping.json]

SOURCE is a folder, a .zip or a .tar file as published: LLaMA-Factory's
``evaluation/mmlu`` (``mmlu.zip`` plus ``mapping.json``), ``evaluation/ceval`` or
``evaluation/cmmlu``, or the benchmarks' own archives. All three lay their CSV
files out as ``<dev|val|test>/<subject>[_<split>].csv`` (MMLU under ``data/``,
without a header row; C-Eval and CMMLU with one). DEST receives
``mapping.json`` and ``<train|validation|test>/<subject>.csv`` with the header
``question,A,B,C,D,answer``: dev becomes ``train`` (the few-shot examples), val
becomes ``validation``. Only subjects listed in the mapping are converted; the
mapping is ``--mapping``, else ``mapping.json`` in SOURCE (LLaMA-Factory ships
one per benchmark).
"""

import argparse
import csv
import io
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tunery.errors import DataError, TuneryError
from tunery.evaluation.taskdata import CHOICES, MAPPING_FILE, read_mapping

SPLIT_NAMES = {"dev": "train", "train": "train", "val": "validation", "validation": "validation",
               "test": "test"}
COLUMNS = ["question", *CHOICES, "answer"]


def source_files(source: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(path inside the source, contents) of every file in a folder, a zip or a tar, or a zip in a folder."""
    if source.is_dir():
        archives = sorted(source.glob("*.zip")) + sorted(source.glob("*.tar*"))
        unpacked = any(source.rglob("*.csv"))
        for path in sorted(source.rglob("*")):
            if path.is_file() and (unpacked or path not in archives):
                yield PurePosixPath(path.relative_to(source).as_posix()), path.read_bytes()
        if len(archives) == 1 and not unpacked:  # LLaMA-Factory's folder: mapping.json beside one zip
            yield from source_files(archives[0])
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for name in archive.namelist():
                if not name.endswith("/"):
                    yield PurePosixPath(name), archive.read(name)
    elif source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    yield PurePosixPath(member.name), archive.extractfile(member).read()
    else:
        raise DataError(f"{source} is not a folder, a .zip or a .tar file.")


def locate(path: PurePosixPath) -> tuple[str, str] | None:
    """(split, subject) of a benchmark CSV such as ``data/test/anatomy_test.csv``; None for other files."""
    if path.suffix != ".csv" or path.parent.name not in SPLIT_NAMES or path.name.startswith("."):
        return None
    folder = path.parent.name
    return SPLIT_NAMES[folder], path.stem.removesuffix(f"_{folder}")


def parse_rows(text: str, where: str) -> list[list[str]]:
    """[question, A, B, C, D, answer] per row, with or without a header row (MMLU has none)."""
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "question" not in header:  # no header: question, A, B, C, D, answer in this order
        if any(len(row) < len(COLUMNS) for row in rows):
            raise DataError(f"{where}: rows without a header must have {len(COLUMNS)} columns "
                            f"({', '.join(COLUMNS)}).")
        return [row[:len(COLUMNS)] for row in rows]
    index = {name: header.index(name.lower()) for name in COLUMNS if name.lower() in header}
    missing = [name for name in COLUMNS[:-1] if name not in index]
    if missing:
        raise DataError(f"{where}: the header lacks column(s) {', '.join(missing)}.")
    # C-Eval's test split has no answer column: the rows are kept, evaluating them reports it
    return [[row[index[name]] if name in index and index[name] < len(row) else "" for name in COLUMNS]
            for row in rows[1:]]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def convert(source: Path, dest: Path, mapping_path: Path | None = None) -> dict[str, dict[str, list[int]]]:
    """Write DEST/mapping.json and DEST/<split>/<subject>.csv.

    Returns [questions, questions without an answer] per split and subject.
    """
    files = list(source_files(source))
    mapping_text = mapping_path.read_bytes() if mapping_path else next(
        (data for path, data in files if path.name == MAPPING_FILE), None)
    if mapping_text is None:
        raise DataError(f"{source} holds no {MAPPING_FILE}; pass --mapping (LLaMA-Factory's "
                        "evaluation/<task>/mapping.json) or write one: {\"<subject>\": {\"name\": ..., "
                        "\"category\": ...}}.")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MAPPING_FILE).write_bytes(mapping_text)
    mapping = read_mapping(dest / MAPPING_FILE)
    counts: dict[str, dict[str, list[int]]] = {}
    for path, data in files:
        found = locate(path)
        if found is None or found[1] not in mapping:
            continue
        split, subject = found
        rows = parse_rows(data.decode("utf-8-sig"), f"{source}:{path}")
        write_csv(dest / split / f"{subject}.csv", rows)
        counts.setdefault(split, {})[subject] = [len(rows), sum(not row[-1].strip() for row in rows)]
    if not counts:
        raise DataError(f"{source} holds no <dev|val|test>/<subject>.csv file of a subject in the mapping.")
    return counts


def describe(counts: dict[str, dict[str, list[int]]], mapping_size: int, dest: Path) -> str:
    lines = [f"Wrote {dest}:"]
    scorable = []
    for split, subjects in sorted(counts.items()):
        questions = sum(total for total, _ in subjects.values())
        unanswered = sum(missing for _, missing in subjects.values())
        notes = []
        if len(subjects) < mapping_size:
            notes.append(f"{mapping_size - len(subjects)} subjects of the mapping have no file")
        if unanswered:  # C-Eval's test split: its answers are not public
            notes.append(f"{unanswered} without an answer: not scorable")
        else:
            scorable.append(split)
        noted = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"  {split}: {len(subjects)} subjects, {questions} questions{noted}")
    evaluated = next((split for split in ("test", "validation") if split in scorable), "test")
    lines.append(f"Evaluate with: tunery eval task_dir={dest.parent} task={dest.name}_{evaluated}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunery.evaluation.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="downloaded benchmark: folder, .zip or .tar")
    parser.add_argument("dest", type=Path, help="task folder to write, e.g. evaluation/mmlu")
    parser.add_argument("--mapping", type=Path, help="mapping.json (default: the one in SOURCE)")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.source, args.dest, args.mapping)
        print(describe(counts, len(read_mapping(args.dest / MAPPING_FILE)), args.dest))
    except TuneryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
