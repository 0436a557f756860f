"""Config of quantized bases (QLoRA): bitsandbytes, HQQ, and pre-quantized GPTQ/AWQ/AQLM models."""

from typing import Literal

from pydantic import Field, field_validator

from tunery.config.section import Section


class QuantizationArgs(Section):
    quantization_bit: int | None = Field(
        None, description="Quantize the frozen base model to 2, 3, 4 or 8 bits on load (QLoRA)."
    )
    quantization_method: Literal["bnb", "hqq", "gptq", "awq", "aqlm"] = Field(
        "bnb", description="Quantization backend: bitsandbytes, HQQ, or a pre-quantized model's format."
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
        if value is not None and value not in (2, 3, 4, 8):
            raise ValueError("quantization_bit must be 2, 3, 4 or 8")
        return value
