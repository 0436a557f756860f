"""Reward functions written by the user: ``reward_funcs: rewards.py:my_reward``.

The file is imported with ``importlib`` (once per file, whatever the number of
functions taken from it) and the function looked up by name. A relative path is
read from ``base_dir`` when one is given, else from the current working
directory, like every other path of a config (``dataset_dir``, ``output_dir``).
"""

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tunery.errors import ConfigError

_MODULES: dict[Path, ModuleType] = {}  # resolved file -> its module, so a file runs once


def is_user_reward(spec: str) -> bool:
    """``path/to/file.py:function``: a Python file, a colon, then a function name."""
    path, colon, _ = spec.rpartition(":")
    return bool(colon) and path.endswith(".py")


def load_user_reward(spec: str, base_dir: Path | None = None):
    """The callable named by ``file.py:function``; ConfigError naming what is wrong otherwise."""
    path_text, _, name = spec.rpartition(":")
    if not name.isidentifier():
        raise ConfigError(f"reward_funcs: '{spec}' must end with a function name after the colon, "
                          "as in 'rewards.py:my_reward'.")
    module = import_file(resolve_path(path_text, base_dir), spec)
    if not hasattr(module, name):
        found = sorted(key for key, value in vars(module).items()
                       if callable(value) and not key.startswith("_") and getattr(value, "__module__", None)
                       == module.__name__)
        known = f" It defines: {', '.join(found)}." if found else " It defines no functions."
        raise ConfigError(f"reward_funcs: '{path_text}' has no function '{name}'.{known}")
    function = getattr(module, name)
    if not callable(function):
        raise ConfigError(f"reward_funcs: '{name}' in '{path_text}' is not a function (its type is "
                          f"{type(function).__name__}); write def {name}(prompts, completions, **columns) "
                          "returning one float per completion.")
    return function


def resolve_path(path_text: str, base_dir: Path | None) -> Path:
    path = Path(path_text).expanduser()
    folder = Path(base_dir) if base_dir is not None else Path.cwd()
    if not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise ConfigError(f"reward_funcs: the reward file '{path_text}' does not exist (looked for {path}; "
                          f"relative paths are read from {folder}).")
    return path.resolve()


def import_file(path: Path, spec: str) -> ModuleType:
    if path in _MODULES:
        return _MODULES[path]
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"tunery_user_rewards_{path.stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"reward_funcs: cannot import '{path}' as Python code.")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:  # any error in the user's file: say which file and what
        del sys.modules[module_name]
        raise ConfigError(f"reward_funcs: importing '{path}' (for '{spec}') failed: "
                          f"{type(err).__name__}: {err}") from err
    _MODULES[path] = module
    return module
