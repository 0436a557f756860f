"""Typed, validated run configuration (``RunConfig``) and its loader."""

from tunery.config.load import load_config, save_config
from tunery.config.schema import RunConfig

__all__ = ["RunConfig", "load_config", "save_config"]
