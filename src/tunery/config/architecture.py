"""Config of methods that change the model's architecture: LongLoRA shift attention, LLaMA Pro.

``shift_attn`` is implemented by ``tunery.model.patches.shift_attn`` (switched on in
``tunery.train.run.choose_batching``); ``use_llama_pro`` by ``tunery.model.llama_pro``
for models expanded with ``tunery expand`` (``tunery.model.expand``).
"""

from pydantic import Field

from tunery.config.section import Section


class ArchitectureArgs(Section):
    shift_attn: bool = Field(
        False,
        description="LongLoRA shift short attention while training (llama, mistral, qwen2, qwen3): "
        "attention inside 4 groups, half of the heads shifted by half a group; padded batches.",
    )
    use_llama_pro: bool = Field(
        False,
        description="LLaMA Pro: train only the blocks added by `tunery expand` "
        "(freeze_trainable_layers = the num_expand used; finetuning_type freeze or lora).",
    )
