"""The optimizer (AdamW over the model helper's parameter groups) and the LR schedule.

Parameter groups come from ``tunery.model.adapters.build_param_groups`` so that
LoRA+ (B matrices learning faster) and weight-decay exclusions live with the
adapter code; schedules come from ``transformers.get_scheduler``.

GaLore (``use_galore``, full or freeze training) uses the ``galore-torch`` package's
``GaLoreAdamW``: the targeted 2-D weights of the decoder's linear layers get a
group carrying ``rank``/``update_proj_gap``/``scale``/``proj_type``, for which the
optimizer projects each gradient onto its top ``galore_rank`` singular directions
(recomputed every ``galore_update_interval`` steps) and keeps Adam's moments in
that small space; every other parameter is updated as plain AdamW by the same
optimizer. ``galore_layerwise`` gives every parameter its own ``GaLoreAdamW``, stepped
from its gradient hook during backward (``train.layerwise``).
"""

import math
import os

import torch
from transformers import get_scheduler

from tunery.config.schema import RunConfig, TrainingArgs
from tunery.errors import ConfigError


def create_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, grouped by ``build_param_groups``."""
    from tunery.model.adapters import build_param_groups

    args = config.training
    groups = build_param_groups(model, config.finetuning, args.learning_rate, args.weight_decay)
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if config.methods.use_galore:
        return create_galore_optimizer(model, config, groups)
    fused = args.optim == "adamw_torch_fused"
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        fused=fused or None,
    )


def create_galore_optimizer(
    model: torch.nn.Module, config: RunConfig, groups: list[dict]
) -> torch.optim.Optimizer:
    """GaLoreAdamW: targeted matrices in projected groups, the rest of ``groups`` as plain AdamW."""
    methods, args = config.methods, config.training
    check_galore(config)
    from galore_torch import GaLoreAdamW

    targets = galore_target_params(model, methods.galore_target)
    galore_groups = []
    for group in groups:
        projected = [p for p in group["params"] if id(p) in targets]
        group["params"] = [p for p in group["params"] if id(p) not in targets]
        if projected:
            galore_groups.append({
                **group, "name": f"galore_{group['name']}", "params": projected, "rank": methods.galore_rank,
                "update_proj_gap": methods.galore_update_interval, "scale": methods.galore_scale,
                "proj_type": methods.galore_proj_type,
            })
    if not galore_groups:
        raise ConfigError(
            f"galore_target ({', '.join(methods.galore_target)}) matches no trainable linear weight; "
            "use `all` or names of linear layers such as q_proj,v_proj."
        )
    plain = [group for group in groups if group["params"]]

    def galore_adamw(param_groups: list[dict]) -> GaLoreAdamW:
        return GaLoreAdamW(
            param_groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon, weight_decay=args.weight_decay, no_deprecation_warning=True,
        )

    if not methods.galore_layerwise:
        return galore_adamw(plain + galore_groups)
    from tunery.train.layerwise import LayerwiseOptimizer

    return LayerwiseOptimizer([
        galore_adamw([{**group, "params": [param]}])
        for group in plain + galore_groups for param in group["params"]
    ])


def check_galore(config: RunConfig) -> None:
    methods = config.methods
    if config.finetuning.finetuning_type == "lora":
        raise ConfigError(
            "use_galore projects the optimizer states of full weights: set `finetuning_type: full` (or "
            "freeze); LoRA already trains low-rank matrices."
        )
    if methods.galore_layerwise:
        check_layerwise(config)
    try:
        import galore_torch  # noqa: F401
    except ImportError:
        raise ConfigError(
            "use_galore needs the galore-torch package: pip install 'tunery[galore]'."
        ) from None
    # Checkpoints hold GaLore's projector objects; let torch.load's safe (weights-only) mode rebuild them.
    from galore_torch.galore_projector import GaLoreProjector

    torch.serialization.add_safe_globals([GaLoreProjector])


def check_layerwise(config: RunConfig) -> None:
    """Layer-wise updates happen inside backward: refuse what must see gradients after it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "galore_layerwise needs a single process: with several, gradients are averaged across "
            "processes after the per-layer updates already ran. Launch one process or set "
            "galore_layerwise: false."
        )
    if config.training.fp16:
        raise ConfigError(
            "galore_layerwise cannot use fp16 loss scaling (gradients must be unscaled before each "
            "per-layer update); use bf16: true or full precision."
        )


def galore_target_params(model: torch.nn.Module, target: list[str]) -> set[int]:
    """ids of the 2-D weights of decoder linear layers named by ``target`` (`all`: every one)."""
    from tunery.model.adapters import NON_TEXT_MODULES, output_head_names

    heads = output_head_names(model)
    found = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name in heads:
            continue
        if set(name.split(".")) & set(NON_TEXT_MODULES):
            continue
        if target != ["all"] and not set(name.split(".")) & set(target):
            continue
        if module.weight.ndim == 2 and module.weight.requires_grad:
            found.add(id(module.weight))
    return found


def count_warmup_steps(args: TrainingArgs, total_steps: int) -> int:
    """``warmup_steps`` when set, else ``ceil(warmup_ratio * total_steps)`` (as transformers)."""
    if args.warmup_steps > 0:
        return args.warmup_steps
    return math.ceil(args.warmup_ratio * total_steps)


def create_scheduler(
    optimizer: torch.optim.Optimizer, args: TrainingArgs, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The transformers schedule ``lr_scheduler_type`` with warmup over ``total_steps``."""
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=count_warmup_steps(args, total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs or None,
    )
