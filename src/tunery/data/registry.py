"""dataset_info.json -> one ``DatasetSpec`` per dataset name.

The attribute names are LLaMA-Factory's (``file_name``, ``formatting``,
``ranking``, ``columns``, ``tags``, ``split``, ``num_samples``, ...), so a
``dataset_info.json`` written for LLaMA-Factory works unchanged.

Resolution order for a name in ``dataset``:

1. ``dataset_dir`` is ``builtin``: only Tunery's demo datasets.
2. The name is an entry of ``<dataset_dir>/dataset_info.json``.
3. The name is one of Tunery's built-in demo datasets (``tunery/data/builtin``).
4. The name is a path to a data file or folder (absolute, relative to the working
   directory, or relative to ``dataset_dir``); its format is inferred from the
   first row.

Tunery runs offline, so hub entries (``hf_hub_url``, ``ms_hub_url``,
``om_hub_url``, ``script_url``, ``cloud_file_name``) raise a ``DataError`` that
says how to download the data and point ``file_name`` at it. An entry that has
both a hub URL and a ``file_name`` that exists locally uses the local file.
"""

import json
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from tunery.errors import DataError

INFO_FILE = "dataset_info.json"
BUILTIN_DIR = Path(__file__).parent / "builtin"
FORMATS = ("alpaca", "sharegpt", "openai")

HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
KNOWN_KEYS = {
    *HUB_KEYS, "file_name", "file_sha1", "formatting", "ranking", "subset", "split", "folder",
    "num_samples", "revision", "columns", "tags", "load_from",
}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None}
SHAREGPT_COLUMNS = {"messages": "conversations"}
COMMON_COLUMNS = ("system", "tools", "chosen", "rejected", "kto_tag")
MEDIA_COLUMNS = ("images", "videos", "audios")
SHAREGPT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
    "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system",
}


@dataclass
class DatasetSpec:
    """Where a dataset lives and how its rows map onto a Conversation."""

    name: str
    path: Path  # a file or a folder of files of one type
    formatting: str = "alpaca"
    ranking: bool = False
    split: str = "train"
    subset: str | None = None  # accepted for compatibility; local files have no subsets
    folder: str | None = None  # accepted for compatibility; only meaningful on a hub
    num_samples: int | None = None
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""  # where the spec came from, for messages

    def column(self, key: str) -> str | None:
        return self.columns.get(key)


def builtin_info() -> dict[str, dict]:
    """Tunery's own demo datasets (package data)."""
    return read_info(BUILTIN_DIR / INFO_FILE)


def read_info(path: Path) -> dict[str, dict]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); fix the file.") from None
    if not isinstance(info, dict):
        raise DataError(f"{path} must hold a JSON object mapping dataset names to their attributes.")
    return info


def resolve_datasets(names: list[str], dataset_dir: str) -> list[DatasetSpec]:
    """One spec per name, in order (see the module docstring for the lookup rules)."""
    return [resolve_dataset(name, dataset_dir) for name in names]


def resolve_dataset(name: str, dataset_dir: str) -> DatasetSpec:
    builtin = builtin_info()
    if dataset_dir == "builtin":
        if name in builtin:
            return spec_from_entry(name, builtin[name], BUILTIN_DIR, "built-in datasets")
        if looks_like_path(name) and Path(name).exists():  # an explicit file path needs no registry
            return infer_spec(Path(name))
        raise DataError(describe_unknown(name, {}, builtin, dataset_dir))
    info_path = Path(dataset_dir) / INFO_FILE
    info = read_info(info_path) if info_path.is_file() else {}
    if name in info:
        return spec_from_entry(name, info[name], Path(dataset_dir), str(info_path))
    if name in builtin:
        return spec_from_entry(name, builtin[name], BUILTIN_DIR, "built-in datasets")
    for candidate in (Path(name), Path(dataset_dir) / name):
        if candidate.exists():
            return infer_spec(candidate)
    raise DataError(describe_unknown(name, info, builtin, dataset_dir))


def looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or Path(name).suffix.lower() in {
        ".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt"
    }


def describe_unknown(name: str, info: dict, builtin: dict, dataset_dir: str) -> str:
    known = sorted(set(info) | set(builtin))
    guesses = get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(g) for g in guesses)}?" if guesses else ""
    where = "the built-in datasets" if dataset_dir == "builtin" else (
        f"{Path(dataset_dir) / INFO_FILE}, the built-in datasets or as a file path"
    )
    if dataset_dir != "builtin" and not Path(dataset_dir).is_dir():
        where += f" (dataset_dir '{dataset_dir}' does not exist)"
    return (
        f"Unknown dataset '{name}': not found in {where}.{hint} "
        f"Built-in datasets: {', '.join(sorted(builtin))}."
    )


def spec_from_entry(name: str, entry: Any, base_dir: Path, source: str) -> DatasetSpec:
    """Build a spec from one dataset_info.json entry (LLaMA-Factory's attribute names)."""
    if not isinstance(entry, dict):
        raise DataError(f"Dataset '{name}' in {source} must be a JSON object of attributes.")
    check_keys(name, entry, source)
    path = local_path(name, entry, base_dir, source)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DataError(
            f"Dataset '{name}' in {source} has formatting '{formatting}'; use one of {', '.join(FORMATS)}."
        )
    return DatasetSpec(
        name=name,
        path=path,
        formatting=formatting,
        ranking=bool(entry.get("ranking", False)),
        split=entry.get("split", "train"),
        subset=entry.get("subset"),
        folder=entry.get("folder"),
        num_samples=entry.get("num_samples"),
        columns=build_columns(name, formatting, entry.get("columns") or {}, source),
        tags=build_tags(name, formatting, entry.get("tags") or {}, source),
        source=source,
    )


def check_keys(name: str, entry: dict, source: str) -> None:
    """Unknown attributes are ignored (as LLaMA-Factory does) unless they look like a typo."""
    for key in entry:
        if key in KNOWN_KEYS:
            continue
        guess = get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.8)
        if guess:
            raise DataError(f"Dataset '{name}' in {source} has attribute '{key}'; did you mean '{guess[0]}'?")
    load_from = entry.get("load_from", "file")
    if load_from != "file" and "file_name" not in entry:
        raise DataError(
            f"Dataset '{name}' in {source} has load_from '{load_from}'; Tunery reads local files only."
        )


def local_path(name: str, entry: dict, base_dir: Path, source: str) -> Path:
    file_name = entry.get("file_name")
    if file_name and (base_dir / file_name).exists():
        return base_dir / file_name
    hub = next((key for key in HUB_KEYS if entry.get(key)), None)
    if hub:
        raise DataError(describe_hub_entry(name, entry, hub, base_dir, source))
    if not file_name:
        raise DataError(f"Dataset '{name}' in {source} has no 'file_name'; add the data file's name.")
    raise DataError(
        f"Dataset '{name}' in {source} points at '{base_dir / file_name}', which does not exist; "
        "put the file there or fix 'file_name' (or `dataset_dir`)."
    )


def describe_hub_entry(name: str, entry: dict, hub: str, base_dir: Path, source: str) -> str:
    repo = entry[hub]
    target = base_dir / name
    how = {
        "hf_hub_url": f"`huggingface-cli download --repo-type dataset {repo} --local-dir {target}`",
        "ms_hub_url": f"`modelscope download --dataset {repo} --local_dir {target}`",
        "om_hub_url": f"the openMind hub client (dataset {repo}) into {target}",
        "script_url": f"running the loading script in '{repo}' once and saving its rows as JSON in {target}",
        "cloud_file_name": f"copying '{repo}' from cloud storage to {target}",
    }[hub]
    return (
        f"Dataset '{name}' in {source} lives on a remote hub ({hub}: {repo}), and Tunery runs offline. "
        f"Download it on a machine with internet, e.g. with {how}, then set \"file_name\": \"{name}\" "
        "in its dataset_info.json entry."
    )


def build_columns(name: str, formatting: str, given: dict, source: str) -> dict[str, str | None]:
    media = [key for key in MEDIA_COLUMNS if given.get(key)]
    if media:
        raise DataError(
            f"Dataset '{name}' in {source} has {media[0]} columns; Tunery trains on text only for now."
        )
    columns: dict[str, str | None] = dict.fromkeys(COMMON_COLUMNS)
    columns.update(ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS)
    if formatting == "openai":
        columns["messages"] = "messages"
    if "text" in given and "prompt" not in given:  # Tunery alias: `text` names the plain-text column
        given = {**given, "prompt": given["text"]}
    check_names(name, "columns", given, set(columns) | {"text", *MEDIA_COLUMNS}, formatting, source)
    columns.update({key: value for key, value in given.items() if key in columns})
    return columns


def build_tags(name: str, formatting: str, given: dict, source: str) -> dict[str, str]:
    if formatting == "alpaca":
        return {}
    tags = dict(OPENAI_TAGS if formatting == "openai" else SHAREGPT_TAGS)
    check_names(name, "tags", given, set(tags), formatting, source)
    tags.update(given)
    return tags


def check_names(name: str, attribute: str, given: dict, allowed: set[str], formatting: str, source: str):
    """A misspelt ``columns``/``tags`` key would silently read nothing: refuse it with a guess."""
    for key in given:
        if key not in allowed:
            guess = get_close_matches(key, sorted(allowed), n=1)
            hint = f" — did you mean '{guess[0]}'?" if guess else ""
            raise DataError(
                f"Dataset '{name}' in {source}: {attribute} has unknown key '{key}'{hint} "
                f"(for {formatting} datasets: {', '.join(sorted(allowed))})."
            )


def infer_spec(path: Path) -> DatasetSpec:
    """A spec for a data file (or folder) given directly, its format read off the first row."""
    from tunery.data.loader import first_row  # loader imports nothing from here at import time

    row = first_row(path)
    entry = infer_entry(row, path)
    return spec_from_entry(str(path), {**entry, "file_name": path.name}, path.parent, f"file {path}")


def infer_entry(row: dict, path: Path) -> dict:
    """The dataset_info.json entry LLaMA-Factory would need for rows shaped like ``row``."""
    keys = set(row)
    extra = {key: key for key in ("system", "tools") if key in keys}
    ranking = {"chosen", "rejected"} <= keys
    if ranking:
        extra.update(chosen="chosen", rejected="rejected")
    for column in ("messages", "conversations"):
        messages = row.get(column)
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            formatting = "openai" if "role" in messages[0] else "sharegpt"
            return {"formatting": formatting, "ranking": ranking, "columns": {"messages": column, **extra}}
    if "instruction" in keys:
        if "history" in keys:
            extra["history"] = "history"
        return {"formatting": "alpaca", "ranking": ranking, "columns": extra}
    if "text" in keys:
        return {"columns": {"prompt": "text"}}
    raise DataError(
        f"Cannot tell the format of {path}: its first row has keys {sorted(keys)}; expected "
        "instruction/output (alpaca), conversations or messages (sharegpt/openai), or text (plain "
        "text). Describe it in a dataset_info.json instead."
    )
