"""Load a tokenizer and a causal LM from a directory, a GGUF file or a built-in alias.

``resolve_model`` turns what the user wrote into a local folder (converting and
caching GGUF files, see ``tunery.model.gguf``). ``load_model`` then picks the
dtype for the device, the attention kernel, RoPE scaling and vocabulary size,
and, for inference, merges the configured adapters. Training-time setup of
trainable parameters lives in ``tunery.model.adapters.apply_finetuning``.
"""

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from tunery.config.schema import ModelArgs, RunConfig, TrainingArgs
from tunery.errors import ConfigError, ModelError
from tunery.model.adapters import apply_finetuning, embedding_module_names
from tunery.model.aliases import ModelAlias, describe_missing, find_alias, models_cache_root
from tunery.model.gguf import cache_dir_for_file, ensure_converted
from tunery.model.patches import apply_training_patches

logger = logging.getLogger(__name__)

FLASH_ATTN_TO_IMPLEMENTATION = {
    "auto": None,  # transformers' default: SDPA where the model supports it, eager otherwise
    "sdpa": "sdpa",
    "eager": "eager",
    "disabled": "eager",
    "fa2": "flash_attention_2",
}


@dataclass(frozen=True)
class ModelSource:
    """A local folder to load from; ``converted`` is True when this call built the cache."""

    path: Path
    alias: ModelAlias | None = None
    converted: bool = False


def resolve_model(name_or_path: str) -> ModelSource:
    """Map a directory, a ``.gguf`` file or a built-in alias to a loadable local folder."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model_name_or_path '{name_or_path}' is a folder without config.json, so it is not a "
                "Hugging Face model folder; point it at the folder holding config.json and the weights."
            )
        return ModelSource(path.resolve())
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(
                f"model_name_or_path '{name_or_path}' is a file; give a model folder or a .gguf file."
            )
        cached = ensure_converted(path, cache_dir_for_file(path, models_cache_root()))
        return ModelSource(cached.path, converted=cached.converted)
    alias = find_alias(name_or_path)
    if alias is None:
        raise ModelError(describe_missing(name_or_path))
    cached = ensure_converted(alias.gguf_path(), models_cache_root() / alias.name)
    return ModelSource(cached.path, alias=alias, converted=cached.converted)


def load_tokenizer(model_args: ModelArgs):
    """The model's tokenizer, padding on the right (what training batches expect)."""
    source = resolve_model(model_args.model_name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(source.path), trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(explain_load_error(model_args, "tokenizer", err)) from None
    tokenizer.padding_side = "right"
    return tokenizer


def load_model_config(path: Path, model_args: ModelArgs) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(explain_load_error(model_args, "config", err)) from None


def explain_load_error(model_args: ModelArgs, what: str, err: Exception) -> str:
    """One sentence for a failed load; remote-code refusals get their own advice."""
    name = model_args.model_name_or_path
    if "trust_remote_code" in str(err) and not model_args.trust_remote_code:
        return (
            f"Model '{name}' ships its own Python code; set `trust_remote_code: true` "
            "if you trust that folder."
        )
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"Cannot load the {what} of model '{name}': {first_line}"


def load_model(
    config: RunConfig,
    tokenizer,
    for_training: bool,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """Load the causal LM described by ``config.model``.

    ``attn_implementation`` overrides ``flash_attn`` (the training loop passes the
    per-example attention of ``tunery.model.attention`` for flattened batches).
    For inference the configured adapters are merged in and the model is put on
    the GPU when there is one; for training the model stays on the CPU for
    accelerate to place, and ``apply_finetuning`` comes next (given the adapters).
    """
    args = config.model
    source = resolve_model(args.model_name_or_path)
    hf_config = load_model_config(source.path, args)
    apply_rope_scaling(hf_config, args, config.data.cutoff_len, for_training)
    dtype = choose_dtype(config, for_training)
    kwargs = {
        "dtype": dtype,
        "attn_implementation": choose_attention(args.flash_attn, attn_implementation),
        "trust_remote_code": args.trust_remote_code,
    }
    try:
        if args.train_from_scratch:
            model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(source.path), config=hf_config, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise ModelError(explain_load_error(args, "weights", err)) from None
    if resize_embeddings(model, tokenizer) and for_training:
        train_resized_embeddings(model, config)
    if for_training:
        prepare_for_training(model)
        return model
    model = apply_finetuning(model, config.finetuning, args.adapter_name_or_path, for_training=False)
    if on_gpu(config.training):
        model.to("cuda")  # training placement is accelerate's job; inference has no one else to do it
    model.eval()
    return model


def on_gpu(training: TrainingArgs) -> bool:
    return torch.cuda.is_available() and not training.use_cpu


def choose_dtype(config: RunConfig, for_training: bool) -> torch.dtype:
    """The dtype weights are loaded in.

    Half precision is used when asked (``bf16``/``fp16``); frozen weights stay in
    it while ``apply_finetuning`` upcasts the trainable ones to fp32. Full
    fine-tuning loads fp32 directly since every weight is trainable anyway.
    Inference on a GPU uses bf16 (fp16 without bf16 support); the CPU default is fp32;
    ``infer_dtype`` overrides both for inference.
    """
    training = config.training
    gpu = on_gpu(training)
    if not for_training and config.inference.infer_dtype != "auto":
        return getattr(torch, config.inference.infer_dtype)
    if training.fp16 and not gpu:
        raise ConfigError("`fp16: true` needs a GPU; on the CPU use `bf16: true` instead.")
    if for_training and config.finetuning.finetuning_type == "full":
        return torch.float32
    if training.bf16:
        return torch.bfloat16
    if training.fp16:
        return torch.float16
    if gpu and not for_training:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def choose_attention(flash_attn: str, override: str | None = None) -> str | None:
    """The attention implementation name transformers should use."""
    if override is not None:
        from tunery.model.attention import ATTENTION_NAME, register

        if override == ATTENTION_NAME:
            register()
        return override
    name = FLASH_ATTN_TO_IMPLEMENTATION[flash_attn]
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ModelError(
            "`flash_attn: fa2` needs the flash-attn package (GPU only); install it or use `flash_attn: sdpa`."
        )
    return name


def apply_rope_scaling(
    hf_config: PretrainedConfig, args: ModelArgs, cutoff_len: int, for_training: bool
) -> None:
    """Stretch RoPE as LLaMA-Factory does: factor = ceil(cutoff_len / max positions) when training."""
    kind = args.rope_scaling
    if kind is None:
        return
    rope = getattr(hf_config, "rope_parameters", None)
    current = getattr(hf_config, "max_position_embeddings", None)
    if not isinstance(rope, dict) or "rope_type" not in rope:
        logger.warning("This model does not expose RoPE parameters; ignoring rope_scaling=%s.", kind)
        return
    if for_training:
        if not current or cutoff_len <= current:
            logger.warning(
                "cutoff_len %s fits in the model's %s positions; rope_scaling is not needed.",
                cutoff_len, current,
            )
            return
        factor = float(math.ceil(cutoff_len / current))
        hf_config.max_position_embeddings = cutoff_len
    else:
        factor = 2.0
    params = {**rope, "rope_type": kind, "factor": factor}
    if kind in ("dynamic", "yarn", "llama3") and current:
        params["original_max_position_embeddings"] = current
    if kind == "llama3":
        params.setdefault("low_freq_factor", 1.0)
        params.setdefault("high_freq_factor", 4.0)
    hf_config.rope_parameters = params
    logger.info("RoPE scaling: %s with factor %s.", kind, factor)


def resize_embeddings(model: torch.nn.Module, tokenizer) -> bool:
    """Grow the embeddings when the tokenizer has more tokens (templates may add some)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer is None or len(tokenizer) <= rows:
        return False
    model.resize_token_embeddings(len(tokenizer))
    logger.info("Resized token embeddings from %d to %d.", rows, len(tokenizer))
    return True


def train_resized_embeddings(model: torch.nn.Module, config: RunConfig) -> None:
    """New token rows must be trained and saved with a LoRA adapter (LLaMA-Factory does the same)."""
    finetuning = config.finetuning
    if finetuning.finetuning_type == "lora" and finetuning.additional_target is None:
        finetuning.additional_target = embedding_module_names(model)
        names = ", ".join(finetuning.additional_target)
        logger.warning("Vocabulary was resized; training %s in full with the adapter.", names)


def prepare_for_training(model: torch.nn.Module) -> None:
    """Training-time switches: no KV cache, the training patches (gradient checkpointing is the loop's)."""
    model.config.use_cache = False
    apply_training_patches(model)
    model.train()
