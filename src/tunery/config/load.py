"""Turn a YAML/JSON file plus ``key=value`` overrides into one validated RunConfig.

Users write flat keys, exactly as in LLaMA-Factory (``lora_rank: 16``); each is
routed to the section that owns a field of that name. Nested sections
(``finetuning: {lora_rank: 16}``) work too. Every mistake becomes one
``ConfigError`` sentence naming the file and key: an unknown key gets a
did-you-mean, a key of a feature Tunery does not have yet says so.
"""

import json
from collections.abc import Iterable, Mapping
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunery.config.schema import SECTIONS, RunConfig
from tunery.config.unsupported import COMPATIBLE_DEFAULTS, UNSUPPORTED_KEYS, UNSUPPORTED_VALUES
from tunery.errors import ConfigError

# flat key -> section name, built from the field names of every section
KEY_OWNER: dict[str, str] = {
    key: section for section, model in SECTIONS.items() for key in model.model_fields
}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read ``path`` (YAML or JSON; optional), apply ``key=value`` overrides, validate."""
    source = str(path) if path else "command line"
    flat = read_config_file(Path(path)) if path else {}
    flat.update(parse_overrides(overrides))
    return build_config(flat, source)


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's keys as one flat dict (nested sections are flattened)."""
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"Config file '{path}' is not valid YAML/JSON: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config file '{path}' must hold a mapping of key: value pairs.")
    return flatten_sections(data)


def flatten_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    """Lift ``section: {key: value}`` blocks to top-level keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["lora_rank=16", "dataset=a,b"]`` -> typed values, parsed as YAML scalars."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override '{item}' must look like key=value (e.g. lora_rank=16).")
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            parsed[key.strip()] = raw
    return parsed


def build_config(flat: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Route flat keys to sections and validate, translating errors for people."""
    flat = apply_aliases(dict(flat))
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        if accepts_as_default(key, value, source):
            continue
        check_supported(key, value, source)
        sections[KEY_OWNER[key]][key] = value
    try:
        return RunConfig(**sections)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source)) from None


def apply_aliases(flat: dict[str, Any]) -> dict[str, Any]:
    """Map LLaMA-Factory spellings that differ from ours onto our keys."""
    if "disable_gradient_checkpointing" in flat:
        flat.setdefault("gradient_checkpointing", not flat.pop("disable_gradient_checkpointing"))
    if "evaluation_strategy" in flat:  # the older transformers spelling
        flat.setdefault("eval_strategy", flat.pop("evaluation_strategy"))
    return flat


def accepts_as_default(key: str, value: Any, source: str) -> bool:
    """True for a key Tunery has no field for but whose value names what Tunery always does."""
    if key not in COMPATIBLE_DEFAULTS:
        return False
    accepted = COMPATIBLE_DEFAULTS[key]
    if value in accepted:
        return True
    raise ConfigError(
        f"{source}: {key}: {value} is not supported yet; Tunery always behaves as {key}: {accepted[0]} "
        "(remove the key)."
    )


def check_supported(key: str, value: Any, source: str) -> None:
    """Reject unknown keys (with a guess) and keys of features not built yet."""
    if key in UNSUPPORTED_KEYS:
        raise ConfigError(f"{source}: key '{key}' is not supported yet ({UNSUPPORTED_KEYS[key]}).")
    if key not in KEY_OWNER:
        known = [*KEY_OWNER, *UNSUPPORTED_KEYS, *COMPATIBLE_DEFAULTS]
        guess = get_close_matches(key, known, n=1, cutoff=0.7)
        hint = f" — did you mean '{guess[0]}'?" if guess else ""
        raise ConfigError(f"{source}: unknown key '{key}'{hint}")
    reason = UNSUPPORTED_VALUES.get((key, str(value)))
    if reason:
        raise ConfigError(f"{source}: {key}: {value} is not supported yet ({reason}).")


def describe_validation_error(err: ValidationError, source: str) -> str:
    """One line per bad key: which key, what was wrong, what was given."""
    lines = []
    for problem in err.errors():
        location = [str(part) for part in problem["loc"] if str(part) not in SECTIONS]
        message = problem["msg"].removeprefix("Value error, ")
        if not location:  # a cross-field check: the message names the keys itself
            lines.append(f"{source}: {message}")
            continue
        given = problem.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{source}: key '{location[0]}': {message}{shown}")
    return "\n".join(lines)


def config_as_yaml(config: RunConfig) -> str:
    """The resolved config as flat YAML, loadable again by ``load_config``."""
    return yaml.safe_dump(config.to_flat(), sort_keys=False, allow_unicode=True)


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(config_as_yaml(config), encoding="utf-8")
