"""``export_model(config)``: base model + adapters -> one self-contained model folder.

The folder holds the merged weights (safetensors shards of ``export_size`` GB,
or ``.bin`` with ``export_legacy_format``), config.json, generation_config.json
(stopping at the template's stop words), the tokenizer with its chat template,
an Ollama ``Modelfile``, optionally a GGUF file (``export_gguf: f16 | q8_0``),
and ``export_config.yaml`` (the resolved config, written last).

Everything is built in a hidden temporary folder next to ``export_dir`` and
swapped into place at the end, so an interrupted or failed export leaves no
half-written files and a previous export stays intact until the new one is
complete. ``export_dir`` may be new, empty, or a previous export (which is
replaced); any other folder is refused rather than deleted.
"""

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunery.config.load import config_as_yaml
from tunery.config.schema import RunConfig
from tunery.errors import ConfigError
from tunery.export.gguf_writer import check_gguf_supported, gguf_file_name, source_pre_tokenizer, write_gguf
from tunery.export.merge import (
    check_no_loftq_adapter,
    check_not_quantized,
    export_dtype,
    load_merged_model,
    save_tokenizer,
    save_weights,
    set_generation_stops,
)
from tunery.export.modelfile import build_modelfile
from tunery.fileio import replace_folder
from tunery.model.load import load_model_config, resolve_model
from tunery.train.run import load_tokenizer_and_template

logger = logging.getLogger(__name__)

EXPORT_RECORD = "export_config.yaml"  # written last: marks a complete Tunery export
MODELFILE = "Modelfile"


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what it holds."""

    folder: Path
    files: list[str]
    gguf_file: str | None


def export_model(config: RunConfig, max_shard_size: str | int | None = None) -> ExportResult:
    """Merge, write and publish the export ``config.export`` describes.

    ``max_shard_size`` overrides ``export_size`` (GB) with any size transformers
    accepts (``"200KB"``, a byte count); the config key stays in whole GB.
    """
    target = check_export_dir(config)
    check_not_quantized(config)
    check_no_loftq_adapter(config)
    tokenizer, template = load_tokenizer_and_template(config)
    if config.export.export_gguf:  # refuse before minutes of merging and writing
        source = resolve_model(config.model.model_name_or_path).path
        check_gguf_supported(load_model_config(source, config.model), tokenizer)
    dtype = export_dtype(config)
    model = load_merged_model(config, tokenizer, dtype)
    set_generation_stops(model, tokenizer, template)
    recorded = config.model_copy(deep=True)  # the record states the dtype actually exported
    recorded.inference.infer_dtype = str(dtype).removeprefix("torch.")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        gguf_name = write_files(staging, model, tokenizer, template, recorded, max_shard_size, target.name)
        share(staging)
        replace_folder(staging, target, durable=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted(path.name for path in target.iterdir())
    logger.info("Exported %s to %s (%s)", config.model.model_name_or_path, target, dtype)
    return ExportResult(target, files, gguf_name)


def write_files(
    folder: Path, model, tokenizer, template, config: RunConfig, max_shard_size: str | int | None, name: str
) -> str | None:
    """Everything an export holds, written into ``folder`` (the record last); returns the GGUF file name."""
    export = config.export
    shard_size = max_shard_size or f"{export.export_size}GB"
    save_weights(model, folder, shard_size, legacy=export.export_legacy_format)
    save_tokenizer(tokenizer, template, folder)  # before the GGUF, which carries the chosen chat template
    gguf_name = gguf_file_name(export.export_gguf) if export.export_gguf else None
    if gguf_name:
        logger.info("Writing %s ...", gguf_name)
        write_gguf(model, tokenizer, folder / gguf_name, export.export_gguf, name=name,
                   pre_tokenizer=source_pre_tokenizer(config.model.model_name_or_path))
    modelfile = build_modelfile(template, tokenizer, f"./{gguf_name}" if gguf_name else ".")
    (folder / MODELFILE).write_text(modelfile, encoding="utf-8")
    (folder / EXPORT_RECORD).write_text(config_as_yaml(config), encoding="utf-8")
    return gguf_name


def share(folder: Path) -> None:
    """mkdtemp and safetensors create private files; an export is meant to be read by others."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)


def check_export_dir(config: RunConfig) -> Path:
    """The export folder, after refusing a missing key, a file, a source folder or someone else's folder."""
    if not config.export.export_dir:
        raise ConfigError(
            "export_dir is not set; add `export_dir: path/to/folder` to the config "
            "(or `export_dir=path` on the command line) to say where the merged model goes."
        )
    target = Path(config.export.export_dir).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"export_dir '{target}' is a file; choose a folder.")
    check_not_a_source(config, target)
    if target.is_dir() and any(target.iterdir()) and not (target / EXPORT_RECORD).is_file():
        raise ConfigError(
            f"export_dir '{target}' is not empty and holds no previous export ({EXPORT_RECORD}); "
            "choose a new or empty folder so nothing of yours is replaced."
        )
    return target


def check_not_a_source(config: RunConfig, target: Path) -> None:
    """Replacing export_dir must never delete the model or an adapter being exported."""
    resolved = target.resolve()
    sources = [resolve_model(config.model.model_name_or_path).path]
    sources += [Path(path) for path in config.model.adapter_name_or_path or []]
    for source in sources:
        source = source.resolve()
        if source == resolved or resolved in source.parents:
            raise ConfigError(
                f"export_dir '{target}' holds the model or adapter being exported ({source}); "
                "choose another folder."
            )
