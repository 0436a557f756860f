"""LLaMA Pro block expansion: a deeper model that computes exactly what the original did.

LLaMA Pro (Wu et al., 2024) adds decoder blocks to a trained model and then trains
only those, so new knowledge goes into new weights and the old ones keep what
they knew. ``expand_model`` follows LLaMA-Factory's ``llama_pro.py`` script:
after every ``num_layers / num_expand`` original blocks it inserts a copy of the
block just before, with the output projections of attention (``o_proj``) and of
the MLP (``down_proj``) set to zero. A pre-norm block adds ``attention(x)`` and
``mlp(x)`` to the residual stream through those projections, so the copy adds
nothing and the expanded model gives the same outputs; its other weights are the
copied block's, which gives the new block a good start once training moves the
zeroed projections.

The new blocks sit at positions ``stride - 1, 2 * stride - 1, ...`` with
``stride = (num_layers + num_expand) / num_expand``, which is how
``tunery.model.llama_pro`` (``use_llama_pro: true``) finds them again from
``freeze_trainable_layers = num_expand``.
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tunery.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

# Linear layers that write a block's result into the residual stream (LLaMA-family names).
OUTPUT_PROJECTIONS = ("o_proj", "down_proj")


@dataclass(frozen=True)
class Expansion:
    """What ``expand_model`` wrote: the folder, the layer counts and where the new blocks are."""

    folder: Path
    num_layers: int
    num_expand: int
    new_layers: list[int]

    def training_keys(self) -> dict[str, object]:
        """The config keys that train only the new blocks (freeze tuning, as LLaMA-Factory prints)."""
        return {
            "model_name_or_path": str(self.folder),
            "finetuning_type": "freeze",
            "freeze_trainable_layers": self.num_expand,
            "freeze_trainable_modules": "all",
            "use_llama_pro": True,
        }


def check_request(num_layers: int, num_expand: int, output: Path) -> None:
    if num_expand <= 0:
        raise ConfigError(f"num_expand must be a positive number of blocks to add (got {num_expand}).")
    if num_layers % num_expand != 0:
        divisors = [n for n in range(1, num_layers + 1) if num_layers % n == 0]
        raise ConfigError(
            f"num_expand {num_expand} does not divide the model's {num_layers} layers, so the new blocks "
            f"cannot be spread evenly; choose one of {', '.join(map(str, divisors))}."
        )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"Output folder '{output}' is not empty; give a new or empty folder.")


def new_layer_positions(num_layers: int, num_expand: int) -> list[int]:
    """Indices of the inserted blocks in the expanded model (after every ``num_layers/num_expand``)."""
    stride = num_layers // num_expand + 1
    return [stride * k - 1 for k in range(1, num_expand + 1)]


def layer_prefix(model: torch.nn.Module, num_layers: int) -> str:
    """The state-dict prefix of the decoder blocks (``model.layers`` for LLaMA-family models)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers and name.endswith("layers"):
            return name
    raise ModelError("Cannot find this model's list of decoder layers, so its blocks cannot be expanded.")


def expanded_state_dict(
    state: dict[str, torch.Tensor], prefix: str, num_layers: int, num_expand: int
) -> dict[str, torch.Tensor]:
    """The weights of the deeper model: originals renumbered, copies with zeroed output projections."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
    by_layer: dict[int, list[tuple[str, torch.Tensor]]] = {i: [] for i in range(num_layers)}
    result: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        found = pattern.match(key)
        if found:
            by_layer[int(found.group(1))].append((found.group(2), value))
        else:
            result[key] = value  # embeddings, final norm, head
    split = num_layers // num_expand
    target = 0
    for index in range(num_layers):
        for rest, value in by_layer[index]:
            result[f"{prefix}.{target}.{rest}"] = value
        target += 1
        if (index + 1) % split == 0:
            for rest, value in by_layer[index]:
                zero = any(f".{name}." in f".{rest}" for name in OUTPUT_PROJECTIONS)
                result[f"{prefix}.{target}.{rest}"] = torch.zeros_like(value) if zero else value.clone()
            target += 1
    return result


def check_identity_projections(state: dict[str, torch.Tensor], prefix: str, layer: int) -> None:
    """A block the expansion cannot make an identity (no o_proj/down_proj) would change the outputs."""
    names = [key for key in state if key.startswith(f"{prefix}.{layer}.")]
    if not all(any(f".{proj}." in key for key in names) for proj in OUTPUT_PROJECTIONS):
        raise ModelError(
            "LLaMA Pro expansion needs LLaMA-style blocks with o_proj and down_proj output projections; "
            "this model's blocks have none."
        )


def expanded_config(path: Path, num_layers: int, num_expand: int, trust_remote_code: bool):
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    config.num_hidden_layers = num_layers + num_expand
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == num_layers:
        split = num_layers // num_expand
        expanded_types = []
        for index, kind in enumerate(layer_types):
            expanded_types.append(kind)
            if (index + 1) % split == 0:
                expanded_types.append(kind)  # a new block has the kind of the block it copies
        config.layer_types = expanded_types
    return config


def expand_model(
    model_name_or_path: str, num_expand: int, output: str | Path, trust_remote_code: bool = False
) -> Expansion:
    """Write the expanded model (safetensors, config, tokenizer) to ``output``."""
    from tunery.model.load import resolve_model

    output = Path(output).expanduser()
    source = resolve_model(model_name_or_path).path
    config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    num_layers = getattr(config, "num_hidden_layers", None)
    if not num_layers:
        raise ModelError(
            f"Model '{model_name_or_path}' does not say how many layers it has (num_hidden_layers)."
        )
    check_request(num_layers, num_expand, output)
    model = AutoModelForCausalLM.from_pretrained(
        str(source), dtype="auto", trust_remote_code=trust_remote_code
    )
    prefix = layer_prefix(model, num_layers)
    state = model.state_dict()
    check_identity_projections(state, prefix, 0)
    new_state = expanded_state_dict(state, prefix, num_layers, num_expand)
    new_config = expanded_config(source, num_layers, num_expand, trust_remote_code)
    expanded = AutoModelForCausalLM.from_config(
        new_config, dtype=model.dtype, trust_remote_code=trust_remote_code
    )
    expanded.load_state_dict(new_state, strict=True)
    expanded.generation_config = model.generation_config
    output.mkdir(parents=True, exist_ok=True)
    expanded.save_pretrained(output)
    AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code).save_pretrained(output)
    new_layers = new_layer_positions(num_layers, num_expand)
    total = new_config.num_hidden_layers
    logger.info("Expanded %d layers to %d; new blocks at %s.", num_layers, total, new_layers)
    return Expansion(output, num_layers, num_expand, new_layers)
