"""GGUF files -> a cached, ordinary safetensors model directory.

transformers can read a GGUF file (``gguf_file=``), de-quantizing it to float,
but that takes ~15 s for a 135M model and the result refuses ``save_pretrained``
because its config carries a GGUF quantization marker. So a GGUF file is
converted once: the model is rebuilt from its config without the marker, its
state dict is copied in, and it is saved with the tokenizer to a cache folder.
Later loads read the folder like any local model, in about a second.

The cache is written to a temporary folder next to its final place and renamed
into place, under a file lock, so a crash never leaves a half-written model and
two processes converting at once end with one complete copy.
"""

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tunery.errors import ModelError
from tunery.fileio import replace_folder

CACHE_FORMAT = 1  # bump when the cache layout changes so old copies are rebuilt
SOURCE_RECORD = "tunery_source.json"  # written last: its presence marks a complete copy


@dataclass(frozen=True)
class CachedModel:
    """A converted model folder, and whether this call had to convert it."""

    path: Path
    converted: bool


def fingerprint(gguf_path: Path) -> dict:
    """What identifies a GGUF file's content cheaply: where it is, its size and mtime."""
    stat = gguf_path.stat()
    return {
        "source": str(gguf_path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "format": CACHE_FORMAT,
    }


def cache_dir_for_file(gguf_path: Path, cache_root: Path) -> Path:
    """Cache folder for a user's own GGUF file, keyed by its fingerprint."""
    digest = hashlib.sha256(json.dumps(fingerprint(gguf_path), sort_keys=True).encode()).hexdigest()
    return cache_root / f"{gguf_path.stem.lower()}-{digest[:12]}"


def is_complete(target: Path, expected: dict) -> bool:
    """True when ``target`` holds a finished conversion of the file ``expected`` describes."""
    record = target / SOURCE_RECORD
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()) == expected
    except (OSError, json.JSONDecodeError):
        return False


def ensure_converted(gguf_path: Path, target: Path) -> CachedModel:
    """Convert ``gguf_path`` into ``target`` unless an up-to-date copy is already there."""
    expected = fingerprint(gguf_path)
    if is_complete(target, expected):
        return CachedModel(target, converted=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target, expected):  # another process finished while we waited
            return CachedModel(target, converted=False)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            convert_gguf(gguf_path, staging)
            (staging / SOURCE_RECORD).write_text(json.dumps(expected, indent=2))
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
            # without a working lock a concurrent writer may win the rename; its copy is as good
            replace_folder(staging, target, taken_by_peer=lambda: is_complete(target, expected))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return CachedModel(target, converted=True)


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive lock across processes (no-op where fcntl is missing; the rename still protects)."""
    try:
        import fcntl
    except ImportError:  # Windows: rely on replace_folder() tolerating a lost rename race
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize a GGUF model and save it, with its tokenizer, as a plain HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelError(f"Cannot read the GGUF file {gguf_path}: {err}") from None
    plain = strip_quantization(loaded)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def strip_quantization(model: torch.nn.Module) -> torch.nn.Module:
    """Rebuild a GGUF-loaded model from its config minus the quantization marker.

    The weights are already de-quantized floats; only the marker blocks saving,
    so the new model is built on the meta device and takes the tensors as they are.
    """
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    plain.eval()
    return plain
