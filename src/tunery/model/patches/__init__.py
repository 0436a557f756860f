"""Monkey patches, quarantined: one module each, version-gated, with the reason and a test.

``apply_training_patches`` is called from ``tunery.model.load`` and
``apply_adapter_patches`` from ``tunery.model.adapters`` (once PEFT has wrapped the
model); each patch changes the model's instances, never a library's classes (the shared
version gate and instance swap live in ``instances``).
"""

import logging

import torch

from tunery.model.patches import lora_linear, rms_norm, rotary, swiglu

logger = logging.getLogger(__name__)


def apply_training_patches(model: torch.nn.Module) -> None:
    """Speed and memory patches for a model about to be trained: forward bit for bit the stock
    code's (the fused backward of ``rms_norm`` rounds differently)."""
    for patch in (swiglu, rms_norm, rotary):
        fused = patch.apply(model)
        if fused:
            logger.debug("%s: patched %d modules", patch.NAME, fused)


def apply_adapter_patches(model: torch.nn.Module) -> None:
    """Speed patches for a PEFT model about to be trained (equal to PEFT's forward to rounding)."""
    fused = lora_linear.apply(model)
    if fused:
        logger.debug("fused %d LoRA linear layers", fused)
