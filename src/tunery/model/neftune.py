"""NEFTune: uniform noise on the input embeddings while training (Jain et al., 2023).

Each training forward adds ``Uniform(-m, m)`` noise with ``m = alpha / sqrt(L * d)``
to the embedding output (``L`` the padded sequence length of the batch, ``d`` the
hidden size), the formula of the paper and of transformers' Trainer. The noise is a
forward hook on the input-embedding module that looks at ``module.training``: the
training loop's ``train()`` switches it on; evaluation, ``model.eval()`` and every
inference path (chat, API, export load the model without the hook) see the clean
embeddings. With packed (flat) batches ``L`` is the length of the packed row, as in
transformers when it packs.
"""

import logging
import math

import torch

logger = logging.getLogger(__name__)


def neftune_magnitude(alpha: float, seq_len: int, hidden_size: int) -> float:
    """The half-width of the uniform noise: ``alpha / sqrt(L * d)``."""
    return alpha / math.sqrt(seq_len * hidden_size)


def make_neftune_hook(alpha: float):
    """A forward hook that adds NEFTune noise to the embedding output in training mode only."""

    def add_noise(module: torch.nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = neftune_magnitude(alpha, output.size(-2), output.size(-1))
        # noise is data, not a function of the weights: no gradient flows through it
        return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)

    return add_noise


def enable_neftune(model: torch.nn.Module, alpha: float) -> torch.utils.hooks.RemovableHandle:
    """Install the noise hook on ``model``'s input embeddings; returns the handle that removes it."""
    embeddings = model.get_input_embeddings()
    handle = embeddings.register_forward_hook(make_neftune_hook(alpha))
    logger.info("NEFTune: noise alpha %g on %s while training", alpha, type(embeddings).__name__)
    return handle
