"""Layer-wise GaLore: one optimizer per parameter, stepped as soon as its gradient is complete.

Plain GaLore shrinks the optimizer *states*; the full-size gradients of every weight
still exist together at the end of backward. ``galore_layerwise`` removes that peak:
each parameter gets its own ``GaLoreAdamW``, and a post-accumulate-grad hook steps it
and frees its gradient while backward is still running through earlier layers, so at
most a few layers' gradients are alive at once.

How it fits the training loop without changing its semantics:

- **Accumulation and split passes**: the hooks are armed only for the last backward of
  an optimizer step (``stepping_in_backward``), so earlier passes accumulate into
  ``.grad`` as usual and the update sees the whole step's gradient.
- **Learning-rate schedule**: this object's ``param_groups`` are the per-parameter
  optimizers' own group dicts, so the loop's scheduler sets their learning rates.
- **Checkpoints**: ``state_dict`` holds every per-parameter optimizer's state, in
  parameter order, and ``load_state_dict`` restores them for an exact resume.
- **Not possible**: clipping by the global gradient norm (the gradients are gone before
  the norm could be known) and multi-process training (DDP reduces gradients after the
  hooks run). The first is skipped with a warning, as in LLaMA-Factory; the second and
  fp16 loss scaling are refused.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Steps ``optimizers[i]`` (one per parameter) from that parameter's gradient hook.

    ``step`` and ``zero_grad`` called by the loop find nothing left to do: the updates
    happened during backward and the gradients were released there.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.per_parameter = optimizers
        self.armed = False
        groups = [group for optimizer in optimizers for group in optimizer.param_groups]
        super().__init__(groups, defaults={})
        self.hooks = [
            param.register_post_accumulate_grad_hook(self.step_parameter(optimizer))
            for optimizer in optimizers for group in optimizer.param_groups for param in group["params"]
        ]

    def step_parameter(self, optimizer: torch.optim.Optimizer):
        def hook(param: torch.Tensor) -> None:
            if self.armed:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return hook

    @contextmanager
    def stepping_in_backward(self) -> Iterator[None]:
        """Update each parameter when its gradient is complete during the backward run inside."""
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """Nothing to do: every parameter was updated during the last backward."""
        if closure is not None:
            with torch.enable_grad():
                closure()

    def state_dict(self) -> dict[str, Any]:
        return {"per_parameter": [optimizer.state_dict() for optimizer in self.per_parameter]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["per_parameter"]
        if len(saved) != len(self.per_parameter):
            raise ValueError(
                f"the checkpoint holds {len(saved)} layer-wise optimizers but this model trains "
                f"{len(self.per_parameter)} parameters; resume with the same model and galore_target."
            )
        for optimizer, state in zip(self.per_parameter, saved, strict=True):
            optimizer.load_state_dict(state)
