"""``use_llama_pro: true``: train only the blocks that ``tunery expand`` added.

As LLaMA-Factory does, the new blocks are found from ``freeze_trainable_layers``
(= the ``num_expand`` given to ``tunery expand``): in a model of ``L`` layers
they are every ``stride = L / freeze_trainable_layers``-th block, at indices
``stride - 1, 2 * stride - 1, ...`` (see ``tunery.model.expand``).

- ``finetuning_type: freeze``: exactly those blocks train (the modules named by
  ``freeze_trainable_modules`` inside them), plus ``freeze_extra_modules``.
- ``finetuning_type: lora``: LoRA goes on the ``lora_target`` modules of those
  blocks only.

``tunery.model.adapters.apply_finetuning`` calls ``setup_llama_pro`` instead of its
own freeze/LoRA setup when the key is on.
"""

import logging

import torch

from tunery.config.schema import FinetuningArgs, RunConfig
from tunery.errors import ConfigError

logger = logging.getLogger(__name__)


def expanded_layer_ids(num_layers: int, num_expand: int) -> list[int]:
    """Indices of the expanded blocks, as LLaMA-Factory computes them from freeze_trainable_layers."""
    if num_expand <= 0 or num_layers % num_expand != 0:
        raise ConfigError(
            f"use_llama_pro: freeze_trainable_layers ({num_expand}) must be the num_expand given to "
            f"`tunery expand`, a positive divisor of the model's {num_layers} layers."
        )
    stride = num_layers // num_expand
    return list(range(stride - 1, num_layers, stride))


def setup_llama_pro(
    model: torch.nn.Module, args: FinetuningArgs, adapters: list[str], run_config: RunConfig
) -> torch.nn.Module:
    """Make only the expanded blocks trainable (freeze) or give only them LoRA; returns the model."""
    from tunery.model.adapters import count_layers

    layer_ids = expanded_layer_ids(count_layers(model), args.freeze_trainable_layers)
    logger.info("LLaMA Pro: training the expanded blocks %s.", ", ".join(map(str, layer_ids)))
    if args.finetuning_type == "freeze":
        from tunery.model.adapters import setup_freeze

        setup_freeze(model, args, layer_ids)
        return model
    if args.finetuning_type == "lora":
        return lora_on(model, args, adapters, run_config, layer_ids)
    raise ConfigError(
        "use_llama_pro needs `finetuning_type: freeze` or `lora` (full tuning would train every block)."
    )


def lora_on(
    model: torch.nn.Module, args: FinetuningArgs, adapters: list[str], run_config: RunConfig,
    layer_ids: list[int],
) -> torch.nn.Module:
    """LoRA with ``lora_target`` narrowed to the full names of those modules inside the given layers."""
    from tunery.model.adapters import find_all_linear_modules, setup_lora

    wanted = set(find_all_linear_modules(model) if args.lora_target == ["all"] else args.lora_target)
    layers = {str(idx) for idx in layer_ids}
    names = [
        name for name, module in model.named_modules()
        if "Linear" in type(module).__name__ and layer_of(name) in layers
        and (name.split(".")[-1] in wanted or name in wanted)
    ]
    if not names:
        raise ConfigError(
            f"use_llama_pro: lora_target ({', '.join(args.lora_target)}) names no linear layer of the "
            f"expanded blocks {', '.join(sorted(layers, key=int))}."
        )
    return setup_lora(model, args.model_copy(update={"lora_target": names}), adapters, run_config)


def layer_of(name: str) -> str | None:
    """The layer number of a module name (its first number: ``model.layers.3.mlp`` -> ``3``)."""
    for part in name.split("."):
        if part.isdigit():
            return part
    return None
