"""Merge adapters into the base model and write it as an ordinary Hugging Face model folder.

The dtype of the export is ``infer_dtype`` when set, else the dtype the base
checkpoint declares in its config.json (fp32 when it declares none), so a bf16
model exports as bf16 and the built-in SmolLM2 (cached as fp32) as fp32. The
model is loaded straight in that dtype and the adapters are merged there (as
LLaMA-Factory does), which needs no more memory than the model itself.

A base that is already quantized (bitsandbytes, GPTQ, AWQ: a ``quantization_config``
in its config.json) is refused: merging a float adapter into integer weights
either fails or silently loses the adapter, so merge into the full-precision base.
So is a config with ``quantization_bit`` (a QLoRA training config): the export must
name the full-precision base without it. LoftQ adapters are refused too: they belong to
the quantized base they were initialised for (``check_no_loftq_adapter``).
"""

import json
import logging
from pathlib import Path

import torch
import yaml
from huggingface_hub import split_torch_state_dict_into_shards

from tunery.config.schema import RunConfig
from tunery.data.templates import AutoTemplate
from tunery.data.templates.jinja import build_chat_template
from tunery.errors import ConfigError, ModelError
from tunery.model.load import load_model, resolve_model
from tunery.model.save import as_dtype

logger = logging.getLogger(__name__)

LEGACY_WEIGHTS_PATTERN = "pytorch_model{suffix}.bin"
LEGACY_INDEX = "pytorch_model.bin.index.json"
RUN_RECORD = "run_config.yaml"  # written beside every trained adapter (tunery.train.run.CONFIG_FILE)


def check_not_quantized(config: RunConfig) -> None:
    """Refuse a quantized base before anything slow happens."""
    bits = config.quantization.quantization_bit
    if bits is not None:  # a QLoRA training config reused for export
        raise ConfigError(
            f"quantization_bit: {bits} asks to merge into a {bits}-bit quantized base, which would round "
            "the adapter away. Remove quantization_bit (e.g. `quantization_bit=null` on the command line): "
            "the export then merges the QLoRA adapter into the full-precision base it was trained from; "
            "add export_gguf: q8_0 for a small file."
        )
    source = resolve_model(config.model.model_name_or_path).path
    declared = read_config_json(source)
    quantization = declared.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else "unknown"
        raise ModelError(
            f"Model '{config.model.model_name_or_path}' is quantized ({method}); adapters cannot be merged "
            "into quantized weights. Export with the full-precision base model as model_name_or_path "
            "(the one the quantized copy was made from) and quantize the merged result afterwards "
            "(e.g. export_gguf: q8_0)."
        )


def check_no_loftq_adapter(config: RunConfig) -> None:
    """Refuse adapters initialised with LoftQ: they were trained against the quantized base.

    LoftQ starts the adapter at the quantization error ``W - Q``, and training continues on top
    of ``Q``; merged into the full-precision ``W``, that error would be counted twice. The
    training record (``run_config.yaml`` beside the adapter) says whether LoftQ was used.
    """
    for adapter in config.model.adapter_name_or_path or []:
        record = Path(adapter) / RUN_RECORD
        if not record.is_file():
            continue
        try:
            bits = (yaml.safe_load(record.read_text(encoding="utf-8")) or {}).get("loftq_bits")
        except yaml.YAMLError:
            continue
        if bits:
            raise ConfigError(
                f"Adapter '{adapter}' was initialised with LoftQ (loftq_bits: {bits}): it learned on top of "
                f"the {bits}-bit quantized base, and merged into the full-precision weights it would add "
                "the quantization error twice. Use it unmerged on the quantized base instead (tunery chat "
                f"or tunery api with quantization_bit={bits} double_quantization=false); a merged export "
                "of LoftQ adapters is not supported."
            )


def read_config_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"Cannot read {folder / 'config.json'}: {err}") from None


def export_dtype(config: RunConfig) -> torch.dtype:
    """``infer_dtype`` when set, else the base checkpoint's declared dtype, else fp32."""
    if config.inference.infer_dtype != "auto":
        return getattr(torch, config.inference.infer_dtype)
    declared = read_config_json(resolve_model(config.model.model_name_or_path).path)
    return as_dtype(declared.get("dtype") or declared.get("torch_dtype")) or torch.float32


def load_merged_model(config: RunConfig, tokenizer, dtype: torch.dtype) -> torch.nn.Module:
    """The base model in ``dtype`` with every configured adapter merged in, on export_device."""
    loading = config.model_copy(deep=True)
    loading.inference.infer_dtype = str(dtype).removeprefix("torch.")
    loading.training.use_cpu = config.export.export_device == "cpu"
    return load_model(loading, tokenizer, for_training=False)


def save_weights(model: torch.nn.Module, folder: Path, max_shard_size: str | int, legacy: bool) -> None:
    """config.json, generation_config.json and the weights in shards of at most ``max_shard_size``."""
    if not legacy:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        return
    # transformers 5 only writes safetensors; .bin shards are written the way it used to.
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    state_dict = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(
        state_dict, filename_pattern=LEGACY_WEIGHTS_PATTERN, max_shard_size=max_shard_size
    )
    for filename, names in split.filename_to_tensors.items():
        torch.save({name: state_dict[name] for name in names}, folder / filename)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / LEGACY_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def set_generation_stops(model: torch.nn.Module, tokenizer, template) -> None:
    """``generate`` on the exported model stops where the chat template ends a reply."""
    stops = template.get_stop_token_ids(tokenizer)
    if stops:
        model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def choose_chat_template(tokenizer, template) -> str | None:
    """The Jinja chat template to ship: one that renders conversations as the model was trained.

    The tokenizer's own template is kept when it renders like the training template
    (it may also know tools); otherwise the training template's Jinja rendition replaces
    it. ``template: auto`` and templates with no Jinja form keep the tokenizer's own.
    """
    native = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if isinstance(template, AutoTemplate):
        return native
    trained = build_chat_template(template, tokenizer)
    if trained is None:
        return native
    if native is not None and renders_alike(tokenizer, native, trained):
        return native
    return trained


SAMPLE_CHATS = (
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello."}],
)


def renders_alike(tokenizer, native: str, trained: str) -> bool:
    """Same text for a prompt (with generation prompt) and a finished chat, with and without system.

    Tunery's Jinja form has the assistant header in the user turn, so it ignores
    ``add_generation_prompt``; the native template needs it for a prompt and not after a reply.
    """
    try:
        for chat in SAMPLE_CHATS:
            prompt = chat[-1]["role"] == "user"
            ours = tokenizer.apply_chat_template(chat, chat_template=trained, tokenize=False)
            theirs = tokenizer.apply_chat_template(
                chat, chat_template=native, tokenize=False, add_generation_prompt=prompt
            )
            if ours != theirs:
                return False
    except Exception:  # a template that cannot render these chats is not the same template
        return False
    return True


def save_tokenizer(tokenizer, template, folder: Path) -> None:
    """The tokenizer (fixed for the template: eos, pad, stop words) with the chosen chat template."""
    chat_template = choose_chat_template(tokenizer, template)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
