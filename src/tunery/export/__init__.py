"""Export: merge adapters into the base model and write a self-contained model folder.

``export_model(config)`` (``tunery export CONFIG``) writes merged safetensors
shards, the tokenizer with its chat template, an Ollama ``Modelfile`` and,
optionally, a GGUF file for llama.cpp/Ollama. See ``tunery.export.run``.
"""

from tunery.export.run import ExportResult, export_model

__all__ = ["ExportResult", "export_model"]
