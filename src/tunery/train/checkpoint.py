"""Resumable checkpoints, written atomically, and the output-directory rules.

A checkpoint folder ``checkpoint-<step>`` holds the trainable weights (a PEFT
adapter or ``save_pretrained`` weights, loadable like LLaMA-Factory's), the
tokenizer, the optimizer, scheduler and grad-scaler states, every process's RNG
states and ``trainer_state.json`` (step, data position, pending log sums). It
is built under a hidden temporary name, fsynced, then renamed, so a run killed
at any moment leaves either a complete checkpoint or none.
"""

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from tunery.config.schema import TrainingArgs
from tunery.errors import ConfigError
from tunery.fileio import replace_folder

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
# Files that mark a folder as holding a previous run's results.
RUN_MARKERS = (
    "trainer_log.jsonl", "all_results.json", "run_config.yaml", "adapter_config.json",
    "adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_resume(args: TrainingArgs) -> Path | None:
    """The checkpoint to resume from: a given folder, or the latest in output_dir for ``true``."""
    value = args.resume_from_checkpoint
    if value is None or value is False or value in ("", "false", "False"):
        return None
    if value is True or value in ("true", "True"):
        found = list_checkpoints(args.output_dir)
        if not found:
            raise ConfigError(
                f"resume_from_checkpoint: true, but output_dir '{args.output_dir}' holds no "
                "checkpoint-<step> folder; train without resuming or point to a checkpoint."
            )
        return found[-1]
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(
            f"resume_from_checkpoint: '{value}' is not a Tunery checkpoint folder (no {STATE_FILE})."
        )
    return path


def check_output_dir(args: TrainingArgs, resuming: bool) -> None:
    """Refuse to mix a new run into a previous run's output_dir unless asked to."""
    folder = Path(args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir '{folder}' is a file; choose a folder.")
    if resuming or args.overwrite_output_dir or not folder.is_dir():
        return
    if list_checkpoints(folder) or any((folder / name).exists() for name in RUN_MARKERS):
        raise ConfigError(
            f"output_dir '{folder}' already holds a previous run; set overwrite_output_dir: true "
            "to replace it, resume_from_checkpoint: true to continue it, or choose another output_dir."
        )


def clear_previous_run(output_dir: str | Path) -> None:
    """For overwrite_output_dir: drop the old logs, results and checkpoints so they cannot mix in."""
    folder = Path(output_dir)
    for name in ("trainer_log.jsonl", "all_results.json", "train_results.json", "eval_results.json"):
        (folder / name).unlink(missing_ok=True)
    for path in list_checkpoints(folder):
        shutil.rmtree(path)


def prune_checkpoints(output_dir: str | Path, limit: int | None) -> None:
    """Keep only the newest ``limit`` checkpoints."""
    if not limit:
        return
    for path in list_checkpoints(output_dir)[:-limit]:
        shutil.rmtree(path, ignore_errors=True)


def temp_path(final: Path) -> Path:
    """The hidden name a folder is built under before being renamed to ``final``."""
    return final.parent / f".tmp-{final.name}"


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(process_index: int) -> str:
    return f"rng_state_{process_index}.pth"


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def save_weights(model: torch.nn.Module, folder: Path) -> None:
    """Adapter (PEFT) or full weights, in the Hugging Face layout."""
    model.save_pretrained(str(folder))


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a checkpoint's trained weights back into ``model`` (in place, exactly)."""
    if is_peft_model(model):
        from peft import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ConfigError(f"Checkpoint '{folder}' does not match this adapter ({unexpected[:3]} ...).")
        return
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing = {name for name, p in model.named_parameters() if p.requires_grad} - set(state)
    if missing:
        raise ConfigError(
            f"Checkpoint '{folder}' lacks trained weights such as '{sorted(missing)[0]}'; "
            "it was written for another model or finetuning_type."
        )
    model.load_state_dict(state, strict=False)


def save_checkpoint(
    final: Path,
    parts: dict[str, Any],
    process_index: int,
    is_main: bool,
    barrier: Callable[[], None],
) -> None:
    """Write a checkpoint from every process (RNG per process, the rest from the main one).

    ``parts`` holds ``model``, ``tokenizer``, ``optimizer``, ``scheduler``, ``scaler`` (or
    None), ``state`` (JSON-able dict) and ``save_only_model``. All processes must call this.
    """
    temp = temp_path(final)
    if is_main:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    barrier()
    torch.save(capture_rng(), temp / rng_file(process_index))
    if is_main:
        write_main_parts(temp, parts)
    barrier()
    if is_main:
        replace_folder(temp, final, durable=True)  # a checkpoint must survive a crash
    barrier()


def write_main_parts(temp: Path, parts: dict[str, Any]) -> None:
    save_weights(parts["model"], temp)
    if parts.get("tokenizer") is not None:
        parts["tokenizer"].save_pretrained(str(temp))
    if not parts.get("save_only_model"):
        torch.save(parts["optimizer"].state_dict(), temp / OPTIMIZER_FILE)
        torch.save(parts["scheduler"].state_dict(), temp / SCHEDULER_FILE)
        if parts.get("scaler") is not None:
            torch.save(parts["scaler"].state_dict(), temp / SCALER_FILE)
    # written last: its presence is what marks a checkpoint as complete
    (temp / STATE_FILE).write_text(json.dumps(parts["state"], indent=2))


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_FILE).read_text())


def load_checkpoint(folder: Path, parts: dict[str, Any], process_index: int) -> dict:
    """Restore weights, optimizer, scheduler, scaler and this process's RNG; return the trainer state."""
    if not (folder / OPTIMIZER_FILE).is_file():
        raise ConfigError(
            f"Checkpoint '{folder}' was saved with save_only_model: true and cannot be resumed; "
            "start a new run from its weights instead (adapter_name_or_path)."
        )
    load_weights(parts["model"], folder)
    # load on the CPU: torch moves each state to its parameter's device (and keeps "step" where it belongs)
    parts["optimizer"].load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu"))
    parts["scheduler"].load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=False))
    if parts.get("scaler") is not None and (folder / SCALER_FILE).is_file():
        parts["scaler"].load_state_dict(torch.load(folder / SCALER_FILE))
    rng_path = folder / rng_file(process_index)
    if rng_path.is_file():  # our own file: it holds numpy state, which weights_only refuses
        restore_rng(torch.load(rng_path, weights_only=False))
    return read_state(folder)
