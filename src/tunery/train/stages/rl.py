"""The base of the RL stages (``ppo``, ``grpo``): prompt rows in, experience batches out.

Rows are prompts. At each training step the loop hands the stage the step's
window of prompt micro-batches (``Stage.make_updates``); the stage rolls them
out with the policy (``train.rollout``), scores the completions, computes what
its loss needs under ``torch.no_grad`` and returns the optimizer updates to run,
each a list of experience micro-batches the loop accumulates as usual.
"""

import time
from collections.abc import Sequence
from typing import Any

import torch

from tunery.data.collate import collate_prompts
from tunery.errors import ConfigError
from tunery.train.rollout import ReferencePolicy, StepMetrics
from tunery.train.stages import Stage

TOKEN_KEYS = ("old_logps", "ref_logps", "advantages", "returns", "old_values")  # flat (N,) per token
ROW_KEYS = ("input_ids", "labels", "attention_mask", "completion_lengths", "sequence_advantages")


def split_rows(batch: dict, max_tokens: int) -> list[dict]:
    """An experience batch as pieces of whole rows of at most ``max_tokens`` padded tokens each;
    per-token vectors are cut at the same rows. Losses are per token or per row, so the pieces'
    summed losses and gradients equal the whole batch's."""
    rows, width = batch["input_ids"].shape
    if max_tokens <= 0 or rows * width <= max_tokens:
        return [batch]
    size = max(1, max_tokens // width)
    offsets = [0, *torch.cumsum(batch["completion_lengths"], 0).tolist()]
    pieces = []
    for start in range(0, rows, size):
        end = min(start + size, rows)
        piece = {key: value[start:end] for key, value in batch.items() if key in ROW_KEYS}
        tokens = slice(offsets[start], offsets[end])
        piece |= {key: value[tokens] for key, value in batch.items() if key in TOKEN_KEYS}
        pieces.append(piece)
    return pieces


class RLStage(Stage):
    """Rows are prompts; each step rolls them out (``make_updates``) and trains on the experience.

    ``per_device_train_batch_size`` counts PROMPTS per micro-batch (GRPO samples
    ``num_generations`` completions for each). The reward source is created at the start of
    training from the config (``train.reward_sources``) unless a caller set ``reward_source``.
    """

    def __init__(self, config: Any, tokenizer: Any = None):
        super().__init__(config, tokenizer)
        self.metrics = StepMetrics()
        self.reward_source: Any = None
        self.reference: ReferencePolicy | None = None
        self.stop_ids: list[int] = []
        self.rollout_end = 0.0

    @property
    def uses_reference(self) -> bool:
        return True

    @property
    def generation_settings(self) -> Any:
        return self.config.generation

    @property
    def sampling_temperature(self) -> float:
        """The temperature completions are sampled at; log-probs are taken at the same one."""
        settings = self.generation_settings
        return settings.temperature if settings.do_sample and settings.temperature > 0 else 1.0

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else self.stop_ids[0]

    def collate(self, rows: Sequence[dict]) -> dict:
        return collate_prompts(rows)

    def split(self, batch: dict, max_tokens: int) -> list[dict]:
        return split_rows(batch, max_tokens)

    def on_train_begin(self, loop: Any) -> None:
        from tunery.train.run import load_tokenizer_and_template

        self.refuse_evaluation(loop)

        tokenizer, template = load_tokenizer_and_template(self.config)
        self.tokenizer = self.tokenizer or tokenizer
        self.stop_ids = template.get_stop_token_ids(self.tokenizer)
        if self.reward_source is None:
            from tunery.train.reward_sources import create_reward_source

            self.reward_source = create_reward_source(self.config, self.tokenizer, template)
        if self.uses_reference and self.reference is None:
            self.reference = ReferencePolicy(loop)

    def before_evaluate(self, loop: Any) -> None:
        self.refuse_evaluation(loop)

    def refuse_evaluation(self, loop: Any) -> None:
        """Held-out prompts have no loss to report; say so before any rollout is spent."""
        if loop.eval_data is not None:
            raise ConfigError(f"stage {self.name} has no evaluation loss: remove val_size, eval_dataset "
                              "and do_eval (the logged reward/mean is the training signal to watch).")

    def make_updates(self, loop: Any, window: list) -> list[list]:
        start = time.perf_counter()
        updates = self.experience_updates(loop, window)
        self.rollout_end = time.perf_counter()
        self.metrics.add("time/rollout", self.rollout_end - start)
        return updates

    def experience_updates(self, loop: Any, window: list) -> list[list]:
        """The step's optimizer updates, each a list of (experience batch, MicroBatch)."""
        raise NotImplementedError

    def on_step_end(self, loop: Any) -> None:
        self.metrics.add("time/update", time.perf_counter() - self.rollout_end)

    def count_input_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def pop_metrics(self, mode: str) -> dict[str, float]:
        return self.metrics.pop() if mode == "train" else {}
