"""Training stages: what differs between pt, sft, rm, dpo, kto, ppo and grpo.

The loop (``train.loop``) is the same for every stage. A stage supplies only
how a list of rows becomes a batch (``collate``) and how a batch becomes a
summed loss plus the number of tokens it is summed over (``compute_loss``).
Returning a *sum* rather than a mean lets the loop normalise by the number of
label tokens across all accumulated micro-batches and all processes, so that
1x8 and 8x1 give the same gradients. Optional hooks let later stages (PPO,
GRPO) generate rollouts or keep a reference model without touching the loop.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from tunery.data.collate import split_flat
from tunery.labels import IGNORE_INDEX
from tunery.registry import Registry

if TYPE_CHECKING:  # only for type hints: the loop imports this package, not the reverse
    from tunery.config.schema import RunConfig


class Stage(ABC):
    """Base class of a training stage; subclasses override ``collate`` and ``compute_loss``."""

    name: ClassVar[str] = ""
    # True when collate() flattens a batch into one row with per-example attention;
    # run.choose_batching enables that attention, or turns this off for models without it.
    flat_batches: ClassVar[bool] = False
    # True when a forward pass holds whole preference pairs (they cannot be split), which
    # doubles the CPU's default token cap (train.memory.forward_token_cap)
    paired_passes: ClassVar[bool] = False

    def __init__(self, config: "RunConfig", tokenizer: Any = None):
        self.config = config
        self.tokenizer = tokenizer

    @abstractmethod
    def collate(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Turn the rows of one micro-batch into model inputs."""

    @abstractmethod
    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        """Return (sum of per-token losses, number of tokens summed); must match count_loss_tokens."""

    def split(self, batch: dict, max_tokens: int) -> list[dict]:
        """``batch`` as forward passes of at most ``max_tokens`` tokens whose summed losses and
        gradients equal the whole batch's (default: whole examples of a flat batch)."""
        return split_flat(batch, max_tokens)

    def count_loss_tokens(self, batch: dict) -> int:
        """Tokens the loss of ``batch`` is summed over, known before the forward pass.

        The loop needs this up front to scale each micro-batch's loss by the token count
        of the whole accumulation window. Default: causal LM labels, shifted by one.
        """
        return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())

    def count_input_tokens(self, batch: dict) -> int:
        """Real (non-padding) input tokens of ``batch``, for throughput logging."""
        if "attention_mask" in batch and batch["attention_mask"].dim() == 2:
            return int(batch["attention_mask"].sum())
        return int(batch["input_ids"].numel())

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Add what the stage trains besides the model's own weights (e.g. a value head)."""
        return model

    def save_extras(self, model: torch.nn.Module, folder: Any) -> None:  # noqa: B027  (optional hook)
        """Write what ``prepare_model`` added beside the saved weights (output_dir and checkpoints)."""

    def load_extras(self, model: torch.nn.Module, folder: Any) -> None:  # noqa: B027  (optional hook)
        """Read back what ``save_extras`` wrote (resuming from a checkpoint)."""

    def pop_metrics(self, mode: str) -> dict[str, float]:
        """Stage metrics averaged since the last call, for ``mode`` train or eval (logged per step)."""
        return {}

    # Optional hooks; the loop calls them with itself as argument.
    def on_train_begin(self, loop: Any) -> None:  # noqa: B027  (optional hook, empty by design)
        """Called once before the first optimizer step (e.g. to build a reference model)."""

    def on_step_end(self, loop: Any) -> None:  # noqa: B027  (optional hook, empty by design)
        """Called after each optimizer step."""

    def before_evaluate(self, loop: Any) -> None:  # noqa: B027  (optional hook, empty by design)
        """Called before each evaluation (e.g. to give held-out rows their reference values)."""

    # Hooks of the RL stages (ppo, grpo), which train on experience they generate.
    def micro_batches_per_step(self, args: Any) -> int:
        """Micro-batches of rows each training step consumes (PPO: a buffer of several updates)."""
        return args.gradient_accumulation_steps

    def make_updates(self, loop: Any, window: list) -> list[list]:
        """The optimizer updates of one step, each a list of (batch, MicroBatch) to accumulate.

        Default: the window itself, one update. RL stages roll out the window's prompts
        and return experience micro-batches (PPO: ``ppo_epochs`` passes over them).
        """
        return [window]


STAGES: Registry[type[Stage]] = Registry("stage")


def get_stage(name: str, config: "RunConfig", tokenizer: Any = None) -> Stage:
    """Instantiate the registered stage ``name`` (a miss lists the known stages)."""
    return STAGES.get(name)(config, tokenizer)


# Importing the modules registers the built-in stages.
from tunery.train.stages import grpo, ppo, preference, pt, rm, sft  # noqa: E402  (rl: their base)

__all__ = ["IGNORE_INDEX", "STAGES", "Stage", "get_stage", "grpo", "ppo", "preference", "pt", "rm", "sft"]
