"""Monkey patches, quarantined: one module each, version-gated, with the reason and a test.

``apply_training_patches`` is called from ``tunery.model.load`` only; each patch
changes the loaded model instance, never transformers' classes.
"""

import logging

import torch

from tunery.model.patches import swiglu

logger = logging.getLogger(__name__)


def apply_training_patches(model: torch.nn.Module) -> None:
    """Memory patches for a model about to be trained (numerically identical to the stock code)."""
    fused = swiglu.apply(model)
    if fused:
        logger.debug("fused SwiGLU in %d MLP layers", fused)
