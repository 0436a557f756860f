"""Stage ``sft``: supervised fine-tuning on conversations.

Rows come from the template with labels -100 on prompt tokens, so the loss
covers only the assistant replies. Collation and loss are the same as ``pt``:
flattened batches, per-example attention, loss at label positions only.
"""

from tunery.train.stages import STAGES
from tunery.train.stages.pt import CausalLMStage


@STAGES.register("sft")
class SupervisedStage(CausalLMStage):
    name = "sft"
