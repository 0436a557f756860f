"""Load a tokenizer and a causal LM from a directory, a GGUF file or a built-in alias.

``resolve_model`` turns what the user wrote into a local folder (converting and
caching GGUF files, see ``tunery.model.gguf``). ``load_model`` then picks the
dtype for the device, the attention kernel, RoPE scaling and vocabulary size,
and, for inference, merges the configured adapters. Training-time setup of
trainable parameters lives in ``tunery.model.adapters.apply_finetuning``; a quantized
base (``quantization_bit``, or a folder already quantized) in ``tunery.model.quantization``.
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
from tunery.model.quantization import attach_adapters_unmerged, finish_quantization, plan_quantization

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
    # QLoRA: quantize on load (bitsandbytes, HQQ) or load a pre-quantized folder (tunery.model.quantization)
    quantization = plan_quantization(config, hf_config, dtype, for_training)
    kwargs.update(quantization.load_kwargs if quantization else {})
    try:
        if args.train_from_scratch:
            model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(source.path), config=hf_config, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise ModelError(explain_load_error(args, "weights", err)) from None
    if quantization:
        model = finish_quantization(model, quantization, on_gpu(config.training), for_training)
    if resize_embeddings(model, tokenizer) and for_training:
        train_resized_embeddings(model, config)
    if for_training:
        prepare_for_training(model)
        return model
    if quantization:  # quantized weights cannot be merged into; quantizers place the model themselves
        model = attach_adapters_unmerged(model, args.adapter_name_or_path or [])
    else:
        model = apply_finetuning(model, config.finetuning, args.adapter_name_or_path, for_training=False)
    if on_gpu(config.training) and not quantization:
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
    """Stretch RoPE as LLaMA-Factory does, in the ``rope_parameters`` form transformers 5 reads.

    Training: factor = ceil(cutoff_len / the model's max positions), only when cutoff_len
    exceeds them (else a warning and no change). Inference: the same factor when cutoff_len
    exceeds the positions (so the training YAML gives its adapter the RoPE it was trained
    with), else 2 (LLaMA-Factory's choice); nothing when the checkpoint already carries this
    scaling (saved by a full run with it). The model's ``rope_theta`` is kept.
    """
    kind = args.rope_scaling
    if kind is None:
        return
    rope = getattr(hf_config, "rope_parameters", None)
    current = getattr(hf_config, "max_position_embeddings", None)
    if not isinstance(rope, dict) or "rope_type" not in rope or not current:
        logger.warning("This model does not expose RoPE parameters; ignoring rope_scaling=%s.", kind)
        return
    if rope["rope_type"] == kind and not for_training:
        return  # saved by a run that already scaled it: scaling again would stretch twice
    if for_training and cutoff_len <= current:
        logger.warning(
            "cutoff_len %s fits in the model's %s positions; rope_scaling is not needed.", cutoff_len, current
        )
        return
    if for_training and kind == "dynamic":
        logger.warning("Dynamic NTK scaling may not work well with fine-tuning (LLaMA-Factory's advice).")
    factor = float(math.ceil(cutoff_len / current)) if cutoff_len > current else 2.0
    if rope["rope_type"] != "default":
        logger.warning("Replacing the model's own %s RoPE scaling with %s.", rope["rope_type"], kind)
    hf_config.rope_parameters = rope_parameters(kind, factor, rope, current)
    if kind != "dynamic":
        # dynamic NTK reads max_position_embeddings as the trained length it scales beyond;
        # the others (yarn and llama3 check it) expect the stretched length here.
        hf_config.max_position_embeddings = int(current * factor)
    logger.info("RoPE scaling: %s with factor %s (the model had %s positions).", kind, factor, current)


def rope_parameters(kind: str, factor: float, rope: dict, original_length: int) -> dict:
    """transformers 5 ``rope_parameters`` for ``kind``: the keys each RoPE type requires, no others."""
    params = {"rope_type": kind, "rope_theta": rope["rope_theta"], "factor": factor}
    if "partial_rotary_factor" in rope:
        params["partial_rotary_factor"] = rope["partial_rotary_factor"]
    if kind in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = original_length
    if kind == "llama3":  # Llama 3.1's values, as LLaMA-Factory sets them
        params["low_freq_factor"] = 1.0
        params["high_freq_factor"] = 4.0
    return params


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
