"""`tunery env`: what a bug report needs — versions, devices, where things are cached."""

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tunery import __version__

LIBRARIES = (
    "torch", "transformers", "peft", "accelerate", "datasets", "pydantic", "gguf", "safetensors",
    "tokenizers", "bitsandbytes", "deepspeed", "vllm", "flash-attn", "gradio", "fastapi",
)


def tunery_home() -> Path:
    """Where models and tokenized datasets are cached ($TUNERY_HOME, default ~/.cache/tunery)."""
    return Path(os.environ.get("TUNERY_HOME") or Path.home() / ".cache" / "tunery")


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def describe_cpu_bf16() -> str:
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "this CPU has AMX: bf16: true is the fast path"
    if "avx512_bf16" in flags:
        return "this CPU has AVX-512 bf16: bf16: true is usually faster"
    return "this CPU has no bf16 matrix units: bf16: true saves memory, not time"


def describe_devices() -> list[str]:
    import torch

    lines = [f"CPU cores: {os.cpu_count()}"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"GPU {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
        lines.append(f"CUDA: {torch.version.cuda}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    else:
        lines.append(f"GPU: none (training runs on the CPU; {describe_cpu_bf16()})")
    if torch.backends.mps.is_available():
        lines.append("Apple MPS: available")
    return lines


def describe_builtin_models() -> list[str]:
    """Each alias with whether its weights are installed and already converted."""
    from tunery.model.aliases import MODEL_ALIASES, models_cache_root

    described = []
    for name in MODEL_ALIASES.names():
        cached = (models_cache_root() / name).is_dir()
        described.append(f"{name} ({'cached' if cached else 'converted on first use'})")
    return described


def describe_environment() -> str:
    lines = [
        f"tunery: {__version__}",
        f"python: {platform.python_version()} ({platform.platform()})",
    ]
    for package in LIBRARIES:
        found = installed_version(package)
        if found:
            lines.append(f"{package}: {found}")
    lines.extend(describe_devices())
    lines.append(f"TUNERY_HOME: {tunery_home()}")
    lines.append(f"built-in models: {', '.join(describe_builtin_models())}")
    return "\n".join(lines)
