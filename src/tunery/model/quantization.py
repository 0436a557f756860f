"""Quantized bases for QLoRA: bitsandbytes and HQQ on load, GPTQ/AWQ/AQLM/bitsandbytes folders as they are.

``plan_quantization`` decides, before the weights load, how a model is quantized:

- ``quantization_bit`` with ``quantization_method: bnb`` (4-bit NF4/FP4 with optional
  double quantization, or 8-bit LLM.int8) builds transformers' ``BitsAndBytesConfig``;
  ``from_pretrained`` quantizes every linear layer but the output head while loading.
  bitsandbytes has a CPU backend, so this trains on a CPU too.
- ``quantization_method: hqq`` (1–6 or 8 bits, pure PyTorch) loads the model in full
  precision and then replaces its linear layers with ``hqq``'s ``HQQLinear`` through
  ``hqq``'s own ``AutoHQQHFModel.quantize_model``: transformers 5's ``HqqConfig`` still
  refuses on-load quantization ("not available yet"), so the hqq package is used
  directly. PEFT puts LoRA on ``HQQLinear`` layers.
- A folder whose config.json declares a ``quantization_config`` (GPTQ, AWQ, AQLM,
  a saved bitsandbytes model, ...) is already quantized: it loads as it is when the
  package its kernels come from is installed, and otherwise fails with a message that
  names the package and the hardware it needs.

Quantized weights are integers and cannot be trained, so a quantized base trains
LoRA only (``finetuning_type: lora``), and full/freeze tuning is refused.

For inference (chat, API, eval, a separate reference model) the config decides:
without ``quantization_bit`` the adapters are merged into the full-precision base, the
usual way to deploy a QLoRA adapter (it was trained against the quantized weights; on
the original ones it answers the same up to the quantization error). With
``quantization_bit`` the base is quantized as in training and the adapter runs
unmerged beside it (merging into 4-bit weights would round the adapter away): less
memory, and exactly the model that was trained, which LoftQ adapters need. A base that
is already quantized is handled the same way. Export refuses both (see
``tunery.export.merge.check_not_quantized``).
"""

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PretrainedConfig

from tunery.config.quantization import PREQUANTIZED_METHODS
from tunery.config.schema import RunConfig
from tunery.errors import ConfigError, ModelError
from tunery.train.memory import release_free_memory

logger = logging.getLogger(__name__)

HQQ_GROUP_SIZE = 64  # hqq's recommended group size for 4-bit and below; rows must divide by it

# The packages transformers needs to load each pre-quantized format, and what their kernels run on.
PREQUANTIZED_NEEDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "gptq": (("optimum", "gptqmodel"), "pip install optimum gptqmodel",
             "their kernels are built for NVIDIA GPUs (CUDA); without one transformers refuses GPTQ models"),
    "awq": (("gptqmodel",), "pip install gptqmodel",
            "transformers 5 runs AWQ through gptqmodel (the older autoawq package is not used); its kernels "
            "are built for NVIDIA GPUs (CUDA)"),
    "aqlm": (("aqlm",), "pip install 'aqlm[gpu,cpu]'",
             "its fast kernels need an NVIDIA GPU (CUDA); the CPU kernels are for small tests only"),
    "bitsandbytes": (("bitsandbytes",), "pip install 'tunery[quant]'",
                     "it runs on NVIDIA GPUs and, more slowly, on CPUs"),
}


@dataclass
class QuantizationPlan:
    """How the base model is quantized: on load (``bnb``/``hqq``) or already (``prequantized``)."""

    method: str  # "bnb", "hqq", or the quant_method a pre-quantized folder declares ("gptq", ...)
    bits: int | None
    prequantized: bool
    compute_dtype: torch.dtype
    load_kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained arguments

    def describe(self) -> str:
        if self.prequantized:
            return f"already quantized ({self.method})"
        return f"{self.bits}-bit {self.method}"


def declared_quantization(hf_config: PretrainedConfig) -> str | None:
    """The ``quant_method`` a model folder's config.json declares, or None for a plain model."""
    declared = getattr(hf_config, "quantization_config", None)
    if declared is None:
        return None
    if isinstance(declared, dict):
        method = declared.get("quant_method")
    else:  # a transformers QuantizationConfigMixin
        method = getattr(declared, "quant_method", None)
    method = getattr(method, "value", method)  # QuantizationMethod is a str enum
    return str(method).lower() if method else "unknown"


def plan_quantization(
    config: RunConfig, hf_config: PretrainedConfig, dtype: torch.dtype, for_training: bool
) -> QuantizationPlan | None:
    """The quantization of this load, after every check that can fail before the weights load.

    ``dtype`` is the dtype load_model chose (bf16 with ``bf16: true``, fp16 with ``fp16: true``,
    else fp32); quantized layers compute in it.
    """
    args = config.quantization
    declared = declared_quantization(hf_config)
    name = config.model.model_name_or_path
    if args.quantization_method in PREQUANTIZED_METHODS and declared != args.quantization_method:
        raise ModelError(
            f"quantization_method: {args.quantization_method} expects a model already quantized with "
            f"{args.quantization_method.upper()}, but the config.json of '{name}' declares "
            f"{declared or 'no quantization'}; remove quantization_method (it is detected) or point "
            "model_name_or_path at such a model."
        )
    if declared is not None:
        if args.quantization_bit is not None:
            raise ModelError(
                f"Model '{name}' is already quantized ({declared}); quantization_bit would quantize it "
                "again. Remove quantization_bit to train LoRA on it as it is, or point model_name_or_path "
                "at the full-precision model to quantize that on load."
            )
        check_prequantized_support(declared, name)
        plan = QuantizationPlan(declared, None, prequantized=True, compute_dtype=dtype)
    elif args.quantization_bit is None:
        return None
    else:
        plan = plan_on_load(config, dtype)
    if for_training:
        check_trainable(config, plan)
    if args.quantization_device_map == "auto":
        plan.load_kwargs["device_map"] = "auto"
    logger.info("Base model: %s.", plan.describe())
    return plan


def plan_on_load(config: RunConfig, dtype: torch.dtype) -> QuantizationPlan:
    """A plan that quantizes a full-precision model while (bnb) or right after (hqq) it loads."""
    args = config.quantization
    bits = args.quantization_bit
    if args.quantization_method == "hqq":
        require_package("hqq", "quantization_method: hqq", "pip install 'tunery[quant]'")
        return QuantizationPlan("hqq", bits, prequantized=False, compute_dtype=dtype)
    require_package("bitsandbytes", f"quantization_bit: {bits}", "pip install 'tunery[quant]'")
    plan = QuantizationPlan("bnb", bits, prequantized=False, compute_dtype=dtype)
    plan.load_kwargs["quantization_config"] = build_bnb_config(config, dtype)
    return plan


def build_bnb_config(config: RunConfig, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for ``quantization_bit`` 4 (NF4/FP4) or 8 (LLM.int8)."""
    from transformers import BitsAndBytesConfig

    args = config.quantization
    if args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=args.quantization_type,
        bnb_4bit_use_double_quant=args.double_quantization,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def require_package(module: str, wanted: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"`{wanted}` needs the {module} package, which is not installed: {install}")


def check_prequantized_support(method: str, name: str) -> None:
    """Refuse a pre-quantized format this machine cannot load, naming the package and hardware."""
    if method == "hqq":
        raise ModelError(
            f"Model '{name}' was saved quantized with HQQ, which this transformers version cannot load. "
            "Load the full-precision model with `quantization_method: hqq` and `quantization_bit` instead "
            "(HQQ quantizes in seconds, no calibration data needed)."
        )
    if method not in PREQUANTIZED_NEEDS:
        return  # fp8, compressed-tensors, torchao, ...: transformers says what it needs
    modules, install, hardware = PREQUANTIZED_NEEDS[method]
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        label = method.upper() if method in PREQUANTIZED_METHODS else method
        raise ModelError(
            f"Model '{name}' is quantized with {label}; "
            f"loading it needs {' and '.join(missing)} ({install}), and {hardware}. Or train on the "
            "full-precision model, with `quantization_bit: 4` to quantize it on load."
        )


def check_trainable(config: RunConfig, plan: QuantizationPlan) -> None:
    """Quantized weights are integers: only LoRA on top of them trains."""
    finetuning = config.finetuning
    where = "quantization_bit" if not plan.prequantized else f"this {plan.method}-quantized model"
    if finetuning.finetuning_type != "lora":
        raise ConfigError(
            f"finetuning_type: {finetuning.finetuning_type} cannot train a quantized base ({where}): "
            "quantized weights are stored as integers and get no gradients. Use `finetuning_type: lora` "
            "(QLoRA), or train the full-precision model without quantization_bit."
        )
    if config.model.train_from_scratch:
        raise ConfigError(
            "train_from_scratch starts from random weights, which cannot be quantized usefully; "
            "remove quantization_bit."
        )
    if len(config.model.adapter_name_or_path or []) > 1:
        raise ConfigError(
            f"With a quantized base ({where}) only one adapter can continue training: earlier adapters "
            "would have to be merged into quantized weights. Merge them into the full-precision model "
            "with `tunery export` first."
        )


def finish_quantization(model: torch.nn.Module, plan: QuantizationPlan, training_on_gpu: bool,
                        for_training: bool) -> torch.nn.Module:
    """After from_pretrained: HQQ quantizes now; a training base is frozen and prepared for k-bit training."""
    if plan.method == "hqq" and not plan.prequantized:
        quantize_hqq(model, plan.bits, plan.compute_dtype, "cuda" if training_on_gpu else "cpu")
    if for_training:
        prepare_for_kbit_training(model, plan.compute_dtype)
    if not plan.prequantized:
        # Quantizing copied every full-precision weight into the C heap and freed it again; glibc keeps
        # those pages resident (measured on SmolLM2-135M: ~700 MB more RSS after a 4-bit load than an
        # fp32 one, which then adds to the first step's peak) until they are trimmed.
        release_free_memory(torch.device("cpu"))
    return model


def quantize_hqq(model: torch.nn.Module, bits: int, compute_dtype: torch.dtype, device: str) -> None:
    """Replace every linear layer but the output head with an ``HQQLinear`` of ``bits`` bits."""
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    quant_config = BaseQuantizeConfig(nbits=bits, group_size=HQQ_GROUP_SIZE)
    try:
        AutoHQQHFModel.quantize_model(model, quant_config=quant_config, compute_dtype=compute_dtype,
                                      device=device)
    except AssertionError as err:  # hqq checks shapes with asserts (rows must divide by the group size)
        raise ModelError(f"HQQ cannot quantize this model to {bits} bits: {err}") from None


def prepare_for_kbit_training(model: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """PEFT's k-bit preparation, minus what Tunery does elsewhere.

    ``peft.prepare_model_for_kbit_training`` freezes the base, upcasts the fp16/bf16
    weights left unquantized (norms, embeddings, head) to fp32, and with gradient
    checkpointing makes the embeddings' output require grad. The last part is not
    needed: Tunery's loop checkpoints non-reentrantly, which needs no input grads. The
    upcast exists because fp16 norms overflow; bf16 has fp32's range, and Tunery keeps
    frozen weights in bf16 with ``bf16: true`` (half the memory), so in bf16 only the
    freezing is done. fp32 and fp16 runs get PEFT's function as it is.
    """
    from peft import prepare_model_for_kbit_training

    if compute_dtype == torch.bfloat16:
        model.requires_grad_(False)
        return
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def attach_adapters_unmerged(model: torch.nn.Module, adapters: Sequence[str]) -> torch.nn.Module:
    """For inference on a quantized base: the adapter runs beside the quantized weights."""
    from peft import PeftModel

    if not adapters:
        return model
    if len(adapters) > 1:
        raise ConfigError(
            "Only one adapter can run on a quantized base (adapters cannot be merged into quantized "
            "weights); merge them into the full-precision model with `tunery export` first, or leave "
            "out quantization_bit to merge them all into the full-precision base."
        )
    model = PeftModel.from_pretrained(model, str(adapters[0]))
    model.requires_grad_(False)
    logger.info("Attached adapter %s unmerged (the base is quantized).", adapters[0])
    return model


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds quantized layers (bitsandbytes, HQQ, or a pre-quantized format)."""
    if getattr(model, "hqq_quantized", False) or getattr(model, "is_quantized", False):
        return True
    return getattr(model, "quantization_method", None) is not None
