"""Tunery: fine-tune large language models end to end."""

__version__ = "0.1.0"
