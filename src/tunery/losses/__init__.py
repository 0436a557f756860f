"""Loss functions: pure tensor functions, one per objective, looked up by name.

``LOSSES.get(name)`` returns the function; each module registers its own with
``@LOSSES.register("name")``. Modules are imported below so that importing
``tunery.losses`` fills the registry.
"""

from tunery.registry import Registry

LOSSES: Registry = Registry("loss")

from tunery.losses import lm, preference, rl  # noqa: E402  (they register after LOSSES exists)

__all__ = ["LOSSES", "lm", "preference", "rl"]
