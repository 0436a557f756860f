"""Plain-dict registries filled by a decorator.

Templates, converters, stages, losses and model aliases all register here so
that a miss can list every known name instead of failing deep inside a lookup.
"""

from collections.abc import Callable
from difflib import get_close_matches
from typing import Generic, TypeVar

from tunery.errors import TuneryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named dict whose misses say what exists and what was probably meant."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` stores the decorated object."""

        def store(item: T) -> T:
            self.add(name, item)
            return item

        return store

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise TuneryError(self.describe_miss(name)) from None

    def describe_miss(self, name: str) -> str:
        guess = get_close_matches(name, self._items, n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        known = ", ".join(sorted(self._items))
        return f"Unknown {self.kind} '{name}'.{hint} Known: {known}."

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
