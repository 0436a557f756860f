"""Config of methods that change the model's architecture: LongLoRA shift attention, LLaMA Pro."""

from pydantic import Field

from tunery.config.section import Section


class ArchitectureArgs(Section):
    shift_attn: bool = Field(
        False, description="LongLoRA shift short attention (LLaMA-family models) for long contexts."
    )
    use_llama_pro: bool = Field(
        False, description="LLaMA Pro: train only the blocks added by `tunery expand`."
    )
