"""Writing results so that a crash never leaves a half-written file or folder behind.

Everything Tunery saves (checkpoints, converted models, tokenized datasets,
results files) is built under a temporary name next to its destination and
then renamed into place: a rename within one file system is atomic, so a
reader sees either the old version or the complete new one.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and one rename."""
    temp = path.with_name(f".tmp-{path.name}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def replace_folder(
    built: Path, final: Path, durable: bool = False, taken_by_peer: Callable[[], bool] | None = None
) -> None:
    """Move the finished folder ``built`` to ``final``, replacing any older ``final``.

    ``durable`` flushes every file to disk first (checkpoints must survive a power
    cut, caches need not). ``taken_by_peer`` says whether a concurrent writer has
    already put an equally good copy at ``final``; if so, losing the rename is fine.
    """
    if durable:
        fsync_tree(built)
    if final.exists():  # set the old copy aside first, so `final` is never missing a file
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(built, final)
    except OSError:
        if taken_by_peer is None or not taken_by_peer():
            raise
    if durable:
        fsync_dir(final.parent)


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` (and the folder entries) to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
