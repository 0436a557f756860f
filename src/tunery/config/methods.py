"""Config of LoRA variants and training methods: DoRA, rsLoRA, PiSSA, GaLore, NEFTune."""

from typing import Literal

from pydantic import Field, field_validator

from tunery.config.section import Section, split_names


class MethodArgs(Section):
    use_dora: bool = Field(False, description="DoRA: learn a magnitude vector besides the LoRA direction.")
    use_rslora: bool = Field(False, description="rsLoRA: scale LoRA by alpha / sqrt(rank) instead of / rank.")
    pissa_init: bool = Field(False, description="PiSSA: initialise LoRA from the top singular vectors.")
    pissa_iter: int = Field(16, ge=-1, description="PiSSA: fast-SVD iterations (-1: exact SVD).")
    pissa_convert: bool = Field(False, description="PiSSA: save the adapter converted to plain LoRA.")
    use_galore: bool = Field(False, description="GaLore: full training, low-rank optimizer states.")
    galore_target: list[str] = Field(
        default_factory=lambda: ["all"], description="GaLore: modules whose weights get projected states."
    )
    galore_rank: int = Field(16, gt=0, description="GaLore: rank of the gradient projection.")
    galore_update_interval: int = Field(200, gt=0, description="GaLore: steps between projection updates.")
    galore_scale: float = Field(2.0, gt=0, description="GaLore: scale of the projected update.")
    galore_proj_type: Literal["std", "reverse_std", "right", "left", "full"] = Field(
        "std", description="GaLore: which side the gradient is projected on."
    )
    galore_layerwise: bool = Field(False, description="GaLore: update per layer (less gradient memory).")
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune: scale of the uniform noise added to embeddings while training."
    )

    _split_targets = field_validator("galore_target", mode="before")(split_names)
