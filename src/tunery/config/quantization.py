"""Config of quantized bases (QLoRA): bitsandbytes, HQQ, and pre-quantized GPTQ/AWQ/AQLM models.

``quantization_bit`` quantizes the frozen base on load (bitsandbytes: 4 or 8 bits; HQQ:
1–6 or 8 bits) and LoRA trains on top. GPTQ, AWQ and AQLM models are quantized
offline with calibration data, so they are never made on load: a folder whose
config.json declares one is detected and loaded as it is (``quantization_method``
then needs no setting). ``tunery.model.quantization`` implements all of it.
"""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunery.config.section import Section

BNB_BITS = (4, 8)
HQQ_BITS = (1, 2, 3, 4, 5, 6, 8)  # hqq's Quantizer.SUPPORTED_BITS, whole numbers only
PREQUANTIZED_METHODS = ("gptq", "awq", "aqlm")


class QuantizationArgs(Section):
    quantization_bit: int | None = Field(
        None,
        description="Quantize the frozen base on load (QLoRA): 4 or 8 bits with bnb, 1-6 or 8 with hqq.",
    )
    quantization_method: Literal["bnb", "hqq", "gptq", "awq", "aqlm"] = Field(
        "bnb",
        description="How quantization_bit quantizes: bitsandbytes (bnb) or HQQ. GPTQ, AWQ and AQLM models "
        "come already quantized and are detected from their config.json.",
    )
    quantization_type: Literal["nf4", "fp4"] = Field("nf4", description="bitsandbytes 4-bit data type.")
    double_quantization: bool = Field(True, description="bitsandbytes 4-bit: also quantize the scales.")
    quantization_device_map: Literal["auto"] | None = Field(
        None, description="Place the quantized model with device_map=auto (large models, inference)."
    )
    loftq_bits: int | None = Field(
        None, description="LoftQ: initialise LoRA so it offsets the error of quantizing to this many bits."
    )
    loftq_iter: int = Field(1, gt=0, description="LoftQ: alternating quantize / SVD iterations.")

    @field_validator("quantization_bit")
    @classmethod
    def check_bits(cls, value: int | None) -> int | None:
        if value is not None and value not in HQQ_BITS:
            raise ValueError("quantization_bit must be 4 or 8 (bitsandbytes), or 1-6 or 8 (hqq)")
        return value

    @model_validator(mode="after")
    def check_bits_fit_method(self) -> "QuantizationArgs":
        """Each on-load method supports its own bit widths; GPTQ/AWQ/AQLM cannot be made on load."""
        bits, method = self.quantization_bit, self.quantization_method
        if bits is None:
            return self
        if method in PREQUANTIZED_METHODS:
            raise ValueError(
                f"quantization_method: {method} means a model already quantized with {method.upper()} "
                "(made offline with calibration data); point model_name_or_path at such a model and leave "
                "out quantization_bit, or use quantization_method: bnb or hqq to quantize on load"
            )
        if method == "bnb" and bits not in BNB_BITS:
            raise ValueError(
                f"bitsandbytes quantizes to 4 or 8 bits, not {bits}; use quantization_method: hqq "
                "for 1-6 bits"
            )
        return self
