"""What every instance patch shares: a version gate and the swap of matching modules' ``forward``."""

import types
from collections.abc import Callable

import torch
from packaging.version import Version


def in_range(version: str, bounds: tuple[Version, Version]) -> bool:
    """Whether ``version`` lies in ``[low, high)``: the releases a patch was checked against."""
    low, high = bounds
    return low <= Version(version) < high


def swap_forward(model: torch.nn.Module, matches: Callable[[torch.nn.Module], bool], forward) -> int:
    """Bind ``forward`` to every module of ``model`` that ``matches`` and has no instance forward yet
    (so patching twice changes nothing); returns how many were patched. Classes stay untouched."""
    count = 0
    for module in model.modules():
        if matches(module) and "forward" not in vars(module):
            module.forward = types.MethodType(forward, module)
            count += 1
    return count
