"""Run the API with uvicorn: where to listen, which key to require, which name to answer to.

Each setting comes from a command-line flag, else an environment variable
(LLaMA-Factory's names: ``API_HOST``, ``API_PORT``, ``API_KEY``,
``API_MODEL_NAME``), else a default: 127.0.0.1, port 8000, no key, and a model
name derived from the config (the last adapter folder's name, else the model's
name: a built-in alias, a folder's name or a .gguf file's stem).
"""

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from tunery.config import RunConfig
from tunery.errors import ConfigError, TuneryError
from tunery.infer.engine import model_label

logger = logging.getLogger(__name__)

API_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "sse_starlette": "sse-starlette"}


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = "tunery"


def resolve_options(
    config: RunConfig,
    host: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    model_name: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> ServeOptions:
    """Flags win over environment variables, which win over the defaults."""
    raw_port = port if port is not None else environ.get("API_PORT", "8000")
    try:
        port_number = int(raw_port)
    except ValueError:
        raise ConfigError(f"API_PORT must be a port number (e.g. 8000), not '{raw_port}'.") from None
    if not 1 <= port_number <= 65535:
        raise ConfigError(f"The port must be between 1 and 65535, not {port_number}.")
    return ServeOptions(
        host=host or environ.get("API_HOST") or "127.0.0.1",
        port=port_number,
        api_key=api_key or environ.get("API_KEY") or None,
        model_name=model_name or environ.get("API_MODEL_NAME") or model_label(config),
    )


def require_api_packages() -> None:
    """Say how to install the API's packages instead of failing on an import deep inside."""
    missing = [name for module, name in API_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise TuneryError(
            f"`tunery api` needs {', '.join(missing)}, which are not installed: pip install 'tunery[api]'"
        )


def serve(config: RunConfig, options: ServeOptions) -> None:
    """Load the model, then answer requests until interrupted (Ctrl+C).

    A reward model (its folder holds ``value_head.safetensors``) is served for scoring only.
    """
    require_api_packages()
    import uvicorn

    from tunery.api.app import create_app
    from tunery.infer.engine import ChatEngine
    from tunery.infer.reward import RewardScorer, is_reward_model

    reward = is_reward_model(config)
    engine = RewardScorer(config) if reward else ChatEngine(config)
    app = create_app(engine, options.model_name, options.api_key)
    key_note = "an API key is required" if options.api_key else "no API key is required"
    logger.info(
        "Serving %s'%s' at http://%s:%d/v1 (%s)", "the reward model " if reward else "",
        options.model_name, options.host, options.port, key_note,
    )
    try:
        uvicorn.run(app, host=options.host, port=options.port, log_level="info")
    finally:
        engine.close()
