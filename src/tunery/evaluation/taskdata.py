"""Benchmark task folders: finding a task by name and reading its questions strictly.

A task is a folder (LLaMA-Factory's ``evaluation/<task>/mapping.json``, with
plain files in place of its zip and dataset script)::

    TASK_DIR/<task>/mapping.json             {"<subject>": {"name": "Display name", "category": "STEM"}}
    TASK_DIR/<task>/<split>/<subject>.csv    header row naming question, A, B, C, D, answer
    TASK_DIR/<task>/<split>/<subject>.jsonl  or one {"question", "A", "B", "C", "D", "answer"} object a line

Column names are matched case-insensitively and other columns are ignored, so
C-Eval's and CMMLU's own CSV files can be used as they are; MMLU's have no
header row (``python -m tunery.evaluation.convert`` rewrites any of the three).
The ``train`` split supplies the few-shot examples; any other split can be
evaluated. ``task: mmlu_test`` means folder ``mmlu``, split ``test`` (the part
after the last underscore, as in LLaMA-Factory); a bare folder name means its
``test`` split. ``task_dir: builtin`` holds Tunery's own sample tasks, which are
also found from any other ``task_dir``.
"""

import csv
import json
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from tunery.errors import DataError

CHOICES = ("A", "B", "C", "D")
REQUIRED_COLUMNS = ("question", *CHOICES, "answer")
BUILTIN_TASK_DIR = Path(__file__).parent / "tasks"
MAPPING_FILE = "mapping.json"
DEFAULT_SPLIT = "test"
SHOT_SPLIT = "train"
ROW_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]  # the texts of A, B, C, D
    answer: str  # one of CHOICES


@dataclass
class Subject:
    key: str  # the file name stem and mapping.json key, e.g. "high_school_physics"
    name: str  # shown in prompts and reports, e.g. "High School Physics"
    category: str  # e.g. "STEM"; accuracy is also reported per category
    questions: list[Question]  # the evaluated split
    shots: list[Question] = field(default_factory=list)  # the train split, for few-shot prompts


@dataclass
class BenchmarkTask:
    name: str
    split: str
    folder: Path
    subjects: list[Subject]

    @property
    def question_count(self) -> int:
        return sum(len(subject.questions) for subject in self.subjects)


def load_task(task: str, task_dir: str, n_shot: int) -> BenchmarkTask:
    """Every subject of ``task`` with its evaluated questions (and train questions when ``n_shot``)."""
    folder, split = find_task(task, task_dir)
    check_split(folder, split)
    if n_shot > 0 and not (folder / SHOT_SPLIT).is_dir():
        raise DataError(
            f"Task folder {folder} has no '{SHOT_SPLIT}' split to take {n_shot} few-shot examples from; "
            f"add {folder / SHOT_SPLIT}/ or set n_shot=0."
        )
    subjects = []
    for key, entry in read_mapping(folder / MAPPING_FILE).items():
        questions = read_questions(subject_file(folder / split, key))
        if not questions:
            raise DataError(f"{subject_file(folder / split, key)} has no questions.")
        shots = read_questions(subject_file(folder / SHOT_SPLIT, key)) if n_shot > 0 else []
        subjects.append(Subject(key, entry["name"], entry["category"], questions, shots))
    return BenchmarkTask(folder.name, split, folder, subjects)


# ----- finding the task ----------------------------------------------------------------------------------


def task_roots(task_dir: str) -> list[Path]:
    """Folders searched for tasks: ``task_dir`` first, then the built-in sample tasks."""
    if task_dir == "builtin":
        return [BUILTIN_TASK_DIR]
    root = Path(task_dir)
    if not root.is_dir():
        raise DataError(f"task_dir '{task_dir}' is not a folder; point it at the folder holding your task "
                        "folders, or use `task_dir: builtin` for Tunery's sample tasks.")
    return [root, BUILTIN_TASK_DIR]


def find_task(task: str, task_dir: str) -> tuple[Path, str]:
    """The task folder and split that ``task`` names: ``mmlu_test`` -> (TASK_DIR/mmlu, "test")."""
    roots = task_roots(task_dir)
    name, underscore, split = task.rpartition("_")
    candidates = [(task, DEFAULT_SPLIT)] + ([(name, split)] if underscore and name and split else [])
    for folder_name, split_name in candidates:
        for root in roots:
            if (root / folder_name / MAPPING_FILE).is_file():
                return root / folder_name, split_name
    for folder_name, _ in candidates:  # a folder without mapping.json is a half-converted task
        for root in roots:
            if (root / folder_name).is_dir():
                raise DataError(f"Task folder {root / folder_name} has no {MAPPING_FILE} "
                                "({\"<subject>\": {\"name\": ..., \"category\": ...}}); add one.")
    raise DataError(describe_unknown_task(task, roots))


def available_tasks(roots: list[Path]) -> list[str]:
    found = {path.parent.name for root in roots for path in root.glob(f"*/{MAPPING_FILE}")}
    return sorted(found)


def describe_unknown_task(task: str, roots: list[Path]) -> str:
    known = available_tasks(roots)
    base = task.rpartition("_")[0] or task
    guess = get_close_matches(task, known, n=1) or get_close_matches(base, known, n=1)
    hint = f" Did you mean '{guess[0]}'?" if guess else ""
    where = " and ".join(str(root) for root in roots)
    example = f"{known[0]}_test" if known else "mmlu_test"
    return (f"Unknown benchmark task '{task}' (looked in {where}).{hint} Available tasks: "
            f"{', '.join(known) or 'none'}; name one as TASK or TASK_SPLIT, e.g. {example}.")


def check_split(folder: Path, split: str) -> None:
    if (folder / split).is_dir():
        return
    splits = sorted(path.name for path in folder.iterdir() if path.is_dir())
    guess = get_close_matches(split, splits, n=1)
    hint = f" Did you mean '{folder.name}_{guess[0]}'?" if guess else ""
    raise DataError(f"Task '{folder.name}' has no split '{split}' (no folder {folder / split}).{hint} "
                    f"Its splits: {', '.join(splits) or 'none'}.")


def subject_file(split_folder: Path, key: str) -> Path:
    for suffix in ROW_SUFFIXES:
        path = split_folder / f"{key}{suffix}"
        if path.is_file():
            return path
    raise DataError(f"{split_folder} has no file for subject '{key}' (expected {key}.csv or {key}.jsonl); "
                    f"add it or remove '{key}' from {MAPPING_FILE}.")


# ----- reading ---------------------------------------------------------------------------------------------


def read_mapping(path: Path) -> dict[str, dict[str, str]]:
    """mapping.json: subject key -> {"name", "category"}, checked entry by entry."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON: {err}.") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path} must be a non-empty object {{\"<subject>\": {{\"name\": ..., "
                        "\"category\": ...}}}.")
    for key, entry in mapping.items():
        named = isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("name", "category"))
        if not named:
            raise DataError(f"{path}: subject '{key}' needs string fields \"name\" and \"category\", "
                            f"got {json.dumps(entry, ensure_ascii=False)[:80]}.")
    return mapping


def read_questions(path: Path) -> list[Question]:
    rows = read_csv_rows(path) if path.suffix == ".csv" else read_jsonl_rows(path)
    return [to_question(path, number, row) for number, row in rows]


def read_csv_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(row number, {lower-case column: value}) for each data row; the header row is not counted."""
    # utf-8-sig: files saved by Excel start with a byte order mark
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        first_row = next(reader, [])
        header = [name.strip().lower() for name in first_row]
        missing = [name for name in REQUIRED_COLUMNS if name.lower() not in header]
        if missing:
            raise DataError(
                f"{path}: the header lacks column(s) {', '.join(missing)} (found: {', '.join(first_row)}). "
                "The first row must name question, A, B, C, D, answer; MMLU's own files have no header "
                "(convert them with `python -m tunery.evaluation.convert`)."
            )
        rows = []
        for number, values in enumerate(reader, start=1):
            if not any(value.strip() for value in values):
                continue  # a trailing blank line
            if len(values) < len(header):
                raise DataError(f"{path} row {number}: {len(values)} fields, the header has {len(header)}; "
                                "quote fields that contain commas or line breaks.")
            rows.append((number, dict(zip(header, values, strict=False))))
    return rows


def read_jsonl_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not valid JSON: {err}.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected an object with question, A, B, C, D, answer.")
        missing = [name for name in REQUIRED_COLUMNS if not any(key.lower() == name.lower() for key in row)]
        if missing:
            raise DataError(f"{path} line {number}: missing field(s) {', '.join(missing)}.")
        texts = {key.lower(): "" if value is None else str(value) for key, value in row.items()}
        rows.append((number, texts))
    return rows


def to_question(path: Path, number: int, row: dict[str, str]) -> Question:
    """One row as a Question; texts are kept exactly as written (the prompt must match the source)."""
    where = f"{path} {'row' if path.suffix == '.csv' else 'line'} {number}"
    if not row["question"].strip():
        raise DataError(f"{where}: the question is empty.")
    answer = row["answer"].strip().upper()
    if answer not in CHOICES:
        shown = row["answer"].strip()
        reason = "is empty" if not shown else f"'{shown}' is not one of {', '.join(CHOICES)}"
        raise DataError(f"{where}: the answer {reason}. Every evaluated and few-shot row needs its answer "
                        "letter (C-Eval's test split has no public answers: evaluate its validation split).")
    return Question(row["question"], tuple(row[letter.lower()] for letter in CHOICES), answer)
