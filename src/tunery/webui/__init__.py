"""Tunery's browser front ends, built with Gradio (``pip install 'tunery[webui]'``).

``chat.build_chat`` is the chat component (streaming replies, system prompt,
tools, generation settings); ``webchat`` serves it alone for one model
(`tunery webchat`); ``app`` is the whole fine-tuning UI (`tunery webui`). Every
UI string lives in ``locales/<lang>.json`` and is
looked up with ``t``; importing this package does not import Gradio, so the
CLI can say how to install it when it is missing.
"""

import json
from functools import cache
from importlib.resources import files

from tunery.errors import ConfigError

FALLBACK_LANGUAGE = "en"


def available_languages() -> tuple[str, ...]:
    """Every language with a ``locales/<lang>.json`` file (English first): a new file is a new language."""
    found = [entry.name.removesuffix(".json") for entry in files(__package__).joinpath("locales").iterdir()
             if entry.name.endswith(".json")]
    return tuple(sorted(found, key=lambda lang: (lang != FALLBACK_LANGUAGE, lang)))


LANGUAGES = available_languages()


@cache
def load_strings(lang: str) -> dict[str, str]:
    """All UI strings of one language (``locales/<lang>.json``)."""
    if lang not in LANGUAGES:
        raise ConfigError(f"Unknown UI language '{lang}'; choose one of: {', '.join(LANGUAGES)}.")
    return json.loads(files(__package__).joinpath("locales", f"{lang}.json").read_text(encoding="utf-8"))


def lookup(key: str, lang: str) -> str | None:
    """The string ``key`` in ``lang`` exactly, or None (no English fallback): for optional texts."""
    return load_strings(lang).get(key)


def t(key: str, lang: str = FALLBACK_LANGUAGE, **values) -> str:
    """The UI string ``key`` in ``lang`` (English where a translation is missing), filled with ``values``."""
    text = load_strings(lang).get(key) or load_strings(FALLBACK_LANGUAGE)[key]
    return text.format(**values) if values else text
