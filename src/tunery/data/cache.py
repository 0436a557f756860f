"""Tokenized datasets on disk: keyed by what produced them, written atomically.

A prepared dataset is stored under ``$TUNERY_HOME/cache/datasets/<key>``
(``TUNERY_HOME`` defaults to ``~/.cache/tunery``) as a ``datasets.DatasetDict``
(``train`` / ``validation``) plus ``report.json``. The key hashes everything
that changes the tokens: the data files (path, size, modification time), the
dataset specs, the config fields that shape encoding, the tokenizer (its full
serialized vocabulary and special tokens) and the template (its definition).
Change any of them and the next run re-tokenizes; change nothing and it loads.

The same layout is used for ``tokenized_path``, which is also what
LLaMA-Factory writes there, so its tokenized folders load too.
"""

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, load_from_disk

from tunery.env import tunery_home
from tunery.errors import DataError
from tunery.fileio import replace_folder

REPORT_FILE = "report.json"
FORMAT_VERSION = 1  # bump when the encoding changes so old caches are not reused


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide ``datasets``' progress bars for bookkeeping steps (saving, selecting rows)."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def dataset_cache_dir() -> Path:
    return tunery_home() / "cache" / "datasets"


def files_fingerprint(paths: list[Path]) -> list[list]:
    """(path, size, mtime) of every file: cheap to compute and changes whenever a file is edited."""
    stamps = []
    for path in paths:
        stat = path.stat()
        stamps.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return stamps


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's full definition (vocab, merges, normalizer) and special tokens."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    elif hasattr(tokenizer, "get_vocab"):
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = [type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""),
               getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "bos_token_id", None),
               getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "add_bos_token", None),
               getattr(tokenizer, "add_eos_token", None), str(getattr(tokenizer, "added_tokens_decoder", ""))]
    digest.update(json.dumps(special, default=str).encode())
    return digest.hexdigest()


def template_fingerprint(template: Any) -> str:
    """The template's definition: its own ``fingerprint()`` if it has one, else its attributes."""
    own = getattr(template, "fingerprint", None)
    if callable(own):
        return str(own())
    state = vars(template) if hasattr(template, "__dict__") else repr(template)
    text = json.dumps([type(template).__qualname__, state], default=repr, sort_keys=True)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)  # object addresses change every run


def cache_key(parts: dict) -> str:
    text = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def has_saved(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def save_prepared(path: Path, train: Dataset | None, eval_set: Dataset | None, report: dict) -> None:
    """Write to a temporary folder next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    splits = {name: data for name, data in (("train", train), ("validation", eval_set)) if data is not None}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with quiet_progress():
            DatasetDict(splits).save_to_disk(str(tmp))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
        # replaces a stale copy (overwrite_cache); another process may have just written the same data
        replace_folder(tmp, path, taken_by_peer=lambda: has_saved(path))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_prepared(path: Path) -> tuple[Dataset | None, Dataset | None, dict]:
    """The (train, validation, report) saved at ``path``."""
    try:
        saved = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(
            f"{path} does not hold a tokenized dataset ({err}); delete it or fix the path."
        ) from None
    if isinstance(saved, Dataset):
        saved = DatasetDict({"train": saved})
    report_path = path / REPORT_FILE
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    return saved.get("train"), saved.get("validation"), report
