"""LoftQ: initialise LoRA so that quantized base + adapter starts close to the full-precision model.

LoftQ (Li et al., 2023) alternates, for every LoRA-wrapped linear layer with weight
``W``: quantize ``Q = q(W - s·BA)``, then take the best rank-r approximation of the
quantization error, ``s·BA = SVD_r(W - Q)``. The base weight is replaced by the
de-quantized ``Q`` and the adapter starts at ``B, A``, so ``Q + s·BA`` is closer to
``W`` than ``Q`` alone is. Quantization is bitsandbytes' own (NF4 blocks of 64
for 4 bits, row-wise int8 for 8 bits), the same bitsandbytes applies when a base is
loaded with ``quantization_bit`` (QLoRA), so the adapter fits the quantized base it
will run on.

PEFT's ``init_lora_weights="loftq"`` does the same but only on a CUDA/XPU device;
this version runs wherever the weights are (the CPU at load time), so it is tested
here and behaves the same on a GPU machine.
"""

import logging

import torch

from tunery.errors import ConfigError

logger = logging.getLogger(__name__)

LOFTQ_BITS = (4, 8)
NF4_BLOCKSIZE = 64  # bitsandbytes' default for 4-bit weights


def check_loftq_available(bits: int) -> None:
    if bits not in LOFTQ_BITS:
        raise ConfigError(f"loftq_bits must be 4 or 8 (bitsandbytes' NF4 or int8); got {bits}.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "LoftQ quantizes with bitsandbytes; install it with `pip install 'tunery[quant]'`."
        ) from None


def quantize_dequantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` after a bitsandbytes round trip at ``bits`` (fp32, same shape)."""
    import bitsandbytes.functional as bnb_functional

    weight = weight.float().contiguous()
    if bits == 4:
        packed, state = bnb_functional.quantize_4bit(weight, blocksize=NF4_BLOCKSIZE, quant_type="nf4")
        return bnb_functional.dequantize_4bit(packed, state).float().reshape(weight.shape)
    quantized, row_scales, _ = bnb_functional.int8_vectorwise_quant(weight)
    return bnb_functional.int8_vectorwise_dequant(quantized, row_scales).float()


@torch.no_grad()
def loftq_decompose(
    weight: torch.Tensor, bits: int, rank: int, scaling: float, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(de-quantized base, lora_A, lora_B) with ``base + scaling * B @ A`` close to ``weight``."""
    weight = weight.float()
    low_rank = torch.zeros_like(weight)
    for _ in range(iterations):
        base = quantize_dequantize(weight - low_rank, bits)
        u, s, vh = torch.linalg.svd(weight - base, full_matrices=False)
        low_rank = (u[:, :rank] * s[:rank]) @ vh[:rank]
    # split sqrt(singular values) over both factors and take the LoRA scaling out of them
    root = (s[:rank] / scaling).sqrt()
    lora_b = u[:, :rank] * root
    lora_a = root[:, None] * vh[:rank]
    return base, lora_a, lora_b


def apply_loftq(model: torch.nn.Module, bits: int, iterations: int, adapter: str = "default") -> int:
    """Re-initialise every LoRA linear layer of a PEFT ``model`` by LoftQ; returns how many."""
    count = 0
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or adapter not in lora_a:
            continue
        base_layer = module.get_base_layer()
        base, a, b = loftq_decompose(
            base_layer.weight, bits, module.r[adapter], module.scaling[adapter], iterations
        )
        dtype = base_layer.weight.dtype
        base_layer.weight.data = base.to(dtype)
        module.lora_A[adapter].weight.data = a.to(module.lora_A[adapter].weight.dtype)
        module.lora_B[adapter].weight.data = b.to(module.lora_B[adapter].weight.dtype)
        count += 1
        logger.debug("LoftQ initialised %s", name)
    logger.info("LoftQ: %d layers initialised for %d-bit bases (%d iteration(s))", count, bits, iterations)
    return count
