"""Monkey patches, quarantined: one module each, version-gated, with the reason and a test.

``apply_training_patches`` is called from ``tunery.model.load`` and
``apply_adapter_patches`` from ``tunery.model.adapters`` (once PEFT has wrapped the
model); each patch changes the model's instances, never a library's classes.
"""

import logging

import torch

from tunery.model.patches import lora_linear, swiglu

logger = logging.getLogger(__name__)


def apply_training_patches(model: torch.nn.Module) -> None:
    """Memory patches for a model about to be trained (numerically identical to the stock code)."""
    fused = swiglu.apply(model)
    if fused:
        logger.debug("fused SwiGLU in %d MLP layers", fused)


def apply_adapter_patches(model: torch.nn.Module) -> None:
    """Speed patches for a PEFT model about to be trained (equal to PEFT's forward to rounding)."""
    fused = lora_linear.apply(model)
    if fused:
        logger.debug("fused %d LoRA linear layers", fused)
