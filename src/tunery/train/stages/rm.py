"""Stage ``rm``: a reward model, the model plus a scalar value head, trained on answer pairs.

The value head is one linear layer (hidden size -> 1, float32) on the final
hidden state. A reply's reward is the head's output at its last token. The loss
for a pair is :math:`-\\log\\sigma(r_{chosen} - r_{rejected})`; ``rewards/accuracies``
is how often the chosen answer scores higher. The head is saved beside the
adapter or weights as ``value_head.safetensors`` (in output_dir and every
checkpoint) and ``tunery.infer.reward`` loads it back for scoring.
"""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunery.losses.example_logps import final_hidden_states
from tunery.losses.preference import pairwise_reward_loss
from tunery.train.stages import STAGES
from tunery.train.stages.preference import PairedStage

VALUE_HEAD_FILE = "value_head.safetensors"
HEAD_NAME = "v_head"


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attach_value_head(model: torch.nn.Module) -> torch.nn.Linear:
    """A trainable float32 head on ``model`` (on its base model under PEFT), zero-initialised bias."""
    base = base_model(model)
    head = torch.nn.Linear(base.config.hidden_size, 1, dtype=torch.float32)
    torch.nn.init.normal_(head.weight, std=1 / (base.config.hidden_size + 1))
    torch.nn.init.zeros_(head.bias)
    base.add_module(HEAD_NAME, head.to(base.device))
    return head


def value_head(model: torch.nn.Module) -> torch.nn.Linear:
    return getattr(base_model(model), HEAD_NAME)


def last_token_scores(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The value head's output at the last token of every example of the batch, float32 ``(E,)``."""
    hidden = final_hidden_states(model, batch)
    if "last_index" in batch:  # a shared-prefix pair batch (tunery.data.shared_prefix)
        states = hidden[0, batch["last_index"].to(hidden.device)]
    elif "cu_seq_lens_q" in batch:
        last = batch["cu_seq_lens_q"][1:].to(torch.long).to(hidden.device) - 1
        states = hidden[0, last]
    else:
        last = batch["attention_mask"].sum(dim=1).to(hidden.device) - 1
        states = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return value_head(model)(states.float()).squeeze(-1)


def save_value_head(model: torch.nn.Module, folder: Path) -> None:
    head = value_head(model)
    tensors = {f"{HEAD_NAME}.{name}": value.detach().float().cpu().contiguous()
               for name, value in head.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{VALUE_HEAD_FILE}.tmp"
    save_file(tensors, str(staging))
    os.replace(staging, folder / VALUE_HEAD_FILE)  # atomic: a reader never sees half a file


def load_value_head(model: torch.nn.Module, folder: Path) -> None:
    tensors = load_file(str(Path(folder) / VALUE_HEAD_FILE))
    state = {name.removeprefix(f"{HEAD_NAME}."): value for name, value in tensors.items()}
    value_head(model).load_state_dict(state)


@STAGES.register("rm")
class RewardModelStage(PairedStage):
    name = "rm"

    @property
    def needs_reference(self) -> bool:
        return False

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        attach_value_head(model)
        return model

    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        scores = last_token_scores(model, batch)
        chosen, rejected = scores[0::2], scores[1::2]
        self.metrics.add({"rewards/chosen": chosen, "rewards/rejected": rejected,
                          "rewards/accuracies": (chosen > rejected).float()})
        return pairwise_reward_loss(chosen, rejected).sum(), batch["pair_count"]

    def save_extras(self, model: torch.nn.Module, folder) -> None:
        save_value_head(model, Path(folder))

    def load_extras(self, model: torch.nn.Module, folder) -> None:
        load_value_head(model, Path(folder))
