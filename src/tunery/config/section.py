"""The base of every config section, shared by the modules that define sections."""

from pydantic import BaseModel, ConfigDict


def split_names(value: object) -> object:
    """Accept ``"a, b"`` as well as ``["a", "b"]`` for list-of-name keys."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
