"""Write a trained model to its output folder, never leaving half-written files.

LoRA runs save a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
that plain ``transformers`` + ``peft`` can load on the base model; full and freeze
runs save all weights as safetensors in the checkpoint's original dtype (training
keeps trainable weights in fp32, the saved copy should not double in size). The
tokenizer is saved alongside. Everything is first written to a temporary folder
inside ``output_dir``, then each file is moved into place with an atomic rename,
configs last, so a reader never sees a config whose weights are missing.

A PiSSA adapter trained with ``pissa_convert`` is saved converted to plain LoRA
(PEFT's ``path_initial_model_for_weight_conversion``): PiSSA trains on a residual
base ``W - B0 A0``, and ``B A - B0 A0`` (rank 2r) is the same update expressed
against the original ``W``, so chat and export on the untouched base reproduce
the tuned model.
"""

import json
import logging
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from peft import PeftModel
from safetensors.torch import save_file

from tunery.config.schema import RunConfig
from tunery.model.adapters import PISSA_INITIAL_STATE
from tunery.model.load import resolve_model

logger = logging.getLogger(__name__)

# Files of a previous save that a new save of the other kind must not leave behind.
WEIGHT_PATTERNS = (
    "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json",
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "pytorch_model*.bin", "pytorch_model.bin.index.json", "config.json", "generation_config.json",
)
CONFIG_FILES = ("adapter_config.json", "config.json")


def save_trained(
    model: torch.nn.Module, tokenizer, output_dir: str | Path, config: RunConfig | None = None
) -> Path:
    """Save the adapter (LoRA) or the full weights (full/freeze) plus the tokenizer; returns the folder."""
    # DDP and torch.compile wrappers would prefix every saved key.
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=out))
    try:
        if isinstance(model, PeftModel):
            save_adapter(model, staging)
        else:
            save_full(model, staging, original_dtype(model, config))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved %s to %s", "adapter" if isinstance(model, PeftModel) else "weights", out)
    return out


def save_adapter(model: PeftModel, folder: Path) -> None:
    """The adapter as PEFT writes it; a PiSSA adapter remembered for conversion as plain LoRA."""
    initial = getattr(model, PISSA_INITIAL_STATE, None)
    if initial is None:
        model.save_pretrained(folder)
        return
    # PEFT reads the initial adapter back from a folder; it must not end up among the outputs
    with tempfile.TemporaryDirectory(prefix=".pissa-init-", dir=folder.parent) as scratch:
        initial_dir = Path(scratch) / "pissa_init"
        initial_dir.mkdir()
        save_file({key: value.contiguous() for key, value in initial.items()},
                  initial_dir / "adapter_model.safetensors", metadata={"format": "pt"})
        model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial_dir))
    logger.info("Saved the PiSSA adapter converted to plain LoRA (rank %d) for the original base",
                2 * model.peft_config["default"].r)


def save_full(model: torch.nn.Module, folder: Path, dtype: torch.dtype | None) -> None:
    """All weights, cast to ``dtype``; the live model is left untouched."""
    state_dict = model.state_dict()
    if dtype is not None:
        state_dict = {
            key: value.to(dtype) if value.is_floating_point() else value for key, value in state_dict.items()
        }
    model.save_pretrained(folder, state_dict=state_dict)
    if dtype is not None:
        # save_pretrained records the live model's dtype; state the dtype actually written.
        config_file = folder / "config.json"
        saved = json.loads(config_file.read_text())
        saved["dtype"] = str(dtype).removeprefix("torch.")
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def original_dtype(model: torch.nn.Module, config: RunConfig | None) -> torch.dtype | None:
    """The dtype of the checkpoint the run started from (its config.json), else the model's own."""
    if config is not None:
        source = resolve_model(config.model.model_name_or_path).path / "config.json"
        try:
            declared = json.loads(source.read_text())
        except (OSError, json.JSONDecodeError):
            declared = {}
        declared_dtype = as_dtype(declared.get("dtype") or declared.get("torch_dtype"))
        if declared_dtype is not None:
            return declared_dtype
    return as_dtype(getattr(model.config, "dtype", None))


def as_dtype(value: object) -> torch.dtype | None:
    """A floating torch dtype from a dtype or its name (configs hold either); else None."""
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def publish(staging: Path, out: Path) -> None:
    """Move staged files into ``out`` (configs last), then drop stale weight files of an older save."""
    entries = sorted(staging.iterdir(), key=lambda p: p.name in CONFIG_FILES)
    for entry in entries:
        target = out / entry.name
        if entry.is_dir() and target.exists():
            shutil.rmtree(target)  # a folder cannot be replaced atomically; files are what matter
        os.replace(entry, target)
    fresh = {entry.name for entry in entries}
    for old in out.iterdir():
        if old.name not in fresh and old.is_file() and any(fnmatch(old.name, p) for p in WEIGHT_PATTERNS):
            old.unlink()
