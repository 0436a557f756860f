"""`tunery export`: one self-contained model folder (and GGUF) from a base model and its adapters."""

import argparse

from tunery.cli.common import add_command, config_from_args


def add_export(commands) -> None:
    add_command(
        commands, "export",
        help="merge adapters into the model; write safetensors, a Modelfile and optionally a GGUF file",
        description="Merge adapter_name_or_path into model_name_or_path and write the merged model to "
        "export_dir: safetensors shards of export_size GB, the tokenizer and chat template, an Ollama "
        "Modelfile and, with export_gguf: f16 | q8_0, a GGUF file for llama.cpp and Ollama. "
        "The dtype is infer_dtype, else the base checkpoint's own. "
        "Example: tunery export examples/export.yaml",
        sections=["export"], handler=run_export, optional_config=True,
        config_help="YAML config (model, adapters, template, export keys)",
    )


def run_export(args: argparse.Namespace) -> None:
    config = config_from_args(args, "do_train=false")
    from tunery.export import export_model

    result = export_model(config)
    print(f"Exported to {result.folder}: {', '.join(result.files)}")
    print(f"To run it in Ollama: cd {result.folder} && ollama create NAME -f Modelfile")
