"""What the web UI's pickers offer, without Gradio: models, methods, stages, datasets, runs, devices.

Choices are read from the library at run time (the schema's ``Literal`` values
minus the ones not supported yet, the template and model registries,
``dataset_info.json``), so a new stage, method or template appears in the page
without UI code. ``stage_accepts`` is the one rule saying which datasets a
stage can train on.
"""

import contextlib
import json
import re
from datetime import datetime
from pathlib import Path

from tunery.data.registry import INFO_FILE, builtin_info, read_info
from tunery.errors import TuneryError
from tunery.webui.forms import supported_values

SAVES_DIR = "saves"  # runs go to saves/<model>/<method>/<timestamp>, relative to the working directory
TIMESTAMP = "%Y-%m-%d-%H-%M-%S"
ADAPTER_FILE = "adapter_config.json"
MODEL_FILE = "config.json"

# Which kinds of dataset each stage trains on (see ``dataset_kind``); stages not named take conversations.
STAGE_DATA: dict[str, set[str]] = {
    "pt": {"text"},
    "sft": {"conversation"},
    "rm": {"ranking"},
    "dpo": {"ranking"},
    "orpo": {"ranking"},
    "simpo": {"ranking"},
    "kto": {"kto"},
    "ppo": {"conversation"},
    "grpo": {"conversation"},
}


# ----- stages, methods, models, templates -------------------------------------------------------


def stage_choices() -> list[str]:
    return supported_values("stage")


def method_choices() -> list[str]:
    return supported_values("finetuning_type")


def model_choices() -> list[str]:
    from tunery.model.aliases import known_aliases

    return known_aliases()


def template_choices() -> list[str]:
    from tunery.data.templates import TEMPLATES

    return sorted(TEMPLATES.names())


def template_for(model: str) -> str:
    """The chat template a model needs: a built-in model's own, else the tokenizer's (``auto``)."""
    from tunery.model.aliases import default_template_for

    return default_template_for(model or "") or "auto"


# ----- datasets ---------------------------------------------------------------------------------


def dataset_kind(entry: dict) -> str:
    """``ranking``, ``kto``, ``text`` (plain text for pre-training) or ``conversation``."""
    columns = entry.get("columns") or {}
    if entry.get("ranking"):
        return "ranking"
    if columns.get("kto_tag"):
        return "kto"
    plain = entry.get("formatting", "alpaca") == "alpaca" and bool(columns) and set(columns) <= {
        "prompt", "text", "system"} and not columns.keys().isdisjoint({"prompt", "text"})
    if plain or str(entry.get("file_name", "")).endswith(".txt"):
        return "text"
    return "conversation"


def stage_accepts(stage: str, kind: str) -> bool:
    """Whether ``stage`` trains on datasets of ``kind``: the single rule the dataset picker follows."""
    return kind in STAGE_DATA.get(stage, {"conversation"})


def dataset_kinds(dataset_dir: str) -> dict[str, str]:
    """Every dataset name ``dataset_dir`` offers (its dataset_info.json, then the built-in ones) -> kind.

    A broken dataset_info.json offers nothing of its own; the run reports it when it starts.
    """
    entries = dict(builtin_info())
    info_path = Path(dataset_dir) / INFO_FILE
    if dataset_dir != "builtin" and info_path.is_file():
        with contextlib.suppress(TuneryError):  # a broken file offers nothing; the run says why
            entries = {**entries, **read_info(info_path)}  # the folder's own entries win, as in the registry
    return {name: dataset_kind(entry) for name, entry in entries.items() if isinstance(entry, dict)}


def dataset_choices(dataset_dir: str, stage: str) -> list[str]:
    """The dataset names a stage can use, the folder's own first."""
    kinds = dataset_kinds(dataset_dir or "builtin")
    own = [name for name in kinds if name not in builtin_info()]
    builtin = [name for name in kinds if name in builtin_info()]
    return [name for name in own + builtin if stage_accepts(stage, kinds[name])]


def default_dataset_dir() -> str:
    """``data`` when the working directory has one with a dataset_info.json, else the built-in demos."""
    return "data" if (Path("data") / INFO_FILE).is_file() else "builtin"


# ----- where runs go and which runs exist ---------------------------------------------------------


def model_folder_name(model: str) -> str:
    """The saves/ folder of a model: the alias, or the folder's (file's) name, made path-safe."""
    from tunery.model.aliases import find_alias

    alias = find_alias(model or "")
    if alias is not None:
        return alias.name
    path = Path((model or "model").rstrip("/\\"))
    name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return re.sub(r"[^\w.-]+", "-", name) or "model"


def timestamp() -> str:
    return datetime.now().strftime(TIMESTAMP)


def default_output_dir(model: str, method: str, prefix: str = "") -> str:
    """``saves/<model>/<method>/<prefix><timestamp>`` (relative to the working directory)."""
    return str(Path(SAVES_DIR) / model_folder_name(model) / (method or "lora") / f"{prefix}{timestamp()}")


def holds_weights(folder: Path) -> bool:
    return (folder / ADAPTER_FILE).is_file() or (folder / MODEL_FILE).is_file()


def list_runs(model: str) -> list[tuple[str, str]]:
    """(label, path) of every saved run of ``model`` holding an adapter or a model, newest first.

    Runs are ``saves/<model>/<method>/<run>``; their ``checkpoint-<step>`` folders are listed too.
    """
    root = Path(SAVES_DIR) / model_folder_name(model)
    if not root.is_dir():
        return []
    found = []
    for run in root.glob("*/*"):
        for folder in [run, *sorted(run.glob("checkpoint-*"))]:
            if folder.is_dir() and holds_weights(folder):
                found.append((folder.stat().st_mtime, str(folder.relative_to(root)), str(folder)))
    return [(label, path) for _, label, path in sorted(found, reverse=True)]


def split_picked(model: str, picked: list[str]) -> tuple[str, list[str]]:
    """(model_name_or_path, adapters) for the runs picked: adapters stack, a full model replaces the base."""
    adapters = [path for path in picked if (Path(path) / ADAPTER_FILE).is_file()]
    models = [path for path in picked if path not in adapters and (Path(path) / MODEL_FILE).is_file()]
    unknown = [path for path in picked if path not in adapters and path not in models]
    return (models[-1] if models else model), adapters + unknown  # an unknown path is refused later


# ----- devices ----------------------------------------------------------------------------------


def compute_type_choices() -> list[str]:
    """Precisions this machine can train in: fp16 needs a GPU, bf16 a GPU that has it (or a CPU)."""
    import torch

    if torch.cuda.is_available():
        return [*(["bf16"] if torch.cuda.is_bf16_supported() else []), "fp16", "fp32"]
    return ["bf16", "fp32"]


def default_compute_type() -> str:
    """bf16 where it is fast (GPUs that have it, CPUs with AMX/AVX-512 bf16), else fp16 / fp32."""
    import torch

    from tunery.env import cpu_flags

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if {"amx_bf16", "avx512_bf16"} & cpu_flags() else "fp32"


def device_summary() -> str:
    """One line per device, as `tunery env` describes them."""
    from tunery.env import describe_devices

    return " · ".join(describe_devices())


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
