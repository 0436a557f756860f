"""The optimizer (AdamW over the model helper's parameter groups) and the LR schedule.

Parameter groups come from ``tunery.model.adapters.build_param_groups`` so that
LoRA+ (B matrices learning faster) and weight-decay exclusions live with the
adapter code; schedules come from ``transformers.get_scheduler``.
"""

import math

import torch
from transformers import get_scheduler

from tunery.config.schema import RunConfig, TrainingArgs


def create_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, grouped by ``build_param_groups``."""
    from tunery.model.adapters import build_param_groups

    args = config.training
    groups = build_param_groups(model, config.finetuning, args.learning_rate, args.weight_decay)
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = args.optim == "adamw_torch_fused"
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        fused=fused or None,
    )


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
