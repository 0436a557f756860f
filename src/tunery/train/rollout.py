"""What the RL stages (``ppo``, ``grpo``) share: rollouts, experience batches, no-grad log-probs, metrics.

A rollout generates completions for a batch of prompts with the policy being
trained (eval mode, no gradients, LoRA adapters on, KV cache on) through
``model.generation.generate_batch`` — the engine inference uses too — then
decodes them and scores them with the run's reward source.

Completions become a right-padded *experience batch*: prompt + completion ids,
labels -100 on the prompt, the completion (with its stop token, so the policy
also learns when to stop) as labels. Everything per token (old and reference
log-probs, advantages, values, returns) is a flat vector over the batch's
completion tokens in row-major order, the same order in which
``completion_outputs`` returns the policy's log-probs, so the losses can
combine them elementwise.
"""

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tunery.data.collate import collate_padded, reward_columns
from tunery.labels import IGNORE_INDEX
from tunery.losses.example_logps import final_hidden_states, head_token_logps
from tunery.losses.lm import DEFAULT_CHUNK_SIZE, LogitTransform
from tunery.model.generation import cut_at_stop, generate_batch


@dataclass
class Rollout:
    """Completions of a batch of prompts and their rewards."""

    prompts: list[list[int]]
    completions: list[list[int]]  # generated ids, the stop token kept when there was one
    scores: Any  # RewardScores: .total (n,), .per_function {name: (n,)}
    seconds: float

    @property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(ids) for ids in self.completions], dtype=torch.long)


@contextmanager
def generating(loop: Any) -> Iterator[torch.nn.Module]:
    """The policy in eval mode (no dropout; gradient checkpointing off) for the block."""
    model = loop.accelerator.unwrap_model(loop.model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def sample_completions(loop: Any, prompts: list[list[int]], settings: Any, stop_ids: list[int],
                       pad_id: int) -> list[list[int]]:
    """One batched ``generate`` call for all ``prompts``; each completion ends at (with) its stop token."""
    with generating(loop) as model, torch.no_grad(), loop.cpu_autocast():
        outputs = generate_batch(model, prompts, settings, stop_ids, pad_id)
    completions = []
    for generated in outputs:
        kept, stopped = cut_at_stop(generated, stop_ids)
        completions.append([*kept, generated[len(kept)]] if stopped else kept)
    return completions


def roll_out(loop: Any, stage: Any, batch: dict) -> Rollout:
    """Generate for the prompts of a ``data.collate.collate_prompts`` batch and score the completions."""
    prompts = batch["prompt_ids"]
    start = time.perf_counter()
    completions = sample_completions(loop, prompts, stage.generation_settings, stage.stop_ids,
                                     stage.pad_id)
    seconds = time.perf_counter() - start
    texts = [stage.tokenizer.decode(cut_at_stop(ids, stage.stop_ids)[0], skip_special_tokens=True)
             for ids in completions]
    scores = stage.reward_source.score(batch["prompts"], texts, reward_columns(batch))
    return Rollout(prompts, completions, scores, seconds)


def experience_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` of prompt + completion, labels on the
    completion only, plus ``completion_lengths`` ``(B,)``."""
    rows = [{"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}
            for prompt, completion in zip(prompts, completions, strict=True)]
    batch = collate_padded(rows, pad_id)
    batch["completion_lengths"] = torch.tensor([len(ids) for ids in completions], dtype=torch.long)
    return batch


def completion_outputs(model: torch.nn.Module, batch: dict, with_values: bool = False,
                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log-probs (N,), values (N,) or None)`` at the N completion tokens of ``batch``, row-major.

    One decoder pass; the output head only sees completion positions, in chunks. The value of
    a token is the value head at the position that predicts it (the state before the token).
    Log-probs are of the logits divided by the sampling ``temperature`` (the distribution the
    completions were drawn from), as TRL computes them.
    """
    from tunery.train.stages.rm import base_model, value_head

    hidden = final_hidden_states(model, batch)
    base = base_model(model)
    targets = batch["labels"][:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    states = hidden[:, :-1][keep]
    logps = head_token_logps(base.get_output_embeddings(), states, targets[keep],
                             LogitTransform.from_config(base.config).at_temperature(temperature),
                             DEFAULT_CHUNK_SIZE)
    values = value_head(model)(states.float()).squeeze(-1) if with_values else None
    return logps, values


MODEL_KEYS = ("input_ids", "labels", "attention_mask")


@torch.no_grad()
def chunked_outputs(loop: Any, model: torch.nn.Module, batch: dict, with_values: bool = False,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``completion_outputs`` without gradients, a few rows per forward pass (the loop's token cap)."""
    rows, width = batch["input_ids"].shape
    cap = loop.max_tokens_per_forward
    size = max(1, cap // width) if cap > 0 else rows
    logps, values = [], []
    with loop.cpu_autocast():
        for start in range(0, rows, size):
            piece = loop.to_device({key: batch[key][start:start + size] for key in MODEL_KEYS})
            piece_logps, piece_values = completion_outputs(model, piece, with_values, temperature)
            logps.append(piece_logps.float().cpu())
            if piece_values is not None:
                values.append(piece_values.float().cpu())
    return torch.cat(logps), torch.cat(values) if values else None


def padded(flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Flat per-token values ``(N,)`` as ``(B, max length)``, zero past each sequence's end."""
    return torch.nn.utils.rnn.pad_sequence(list(flat.split(lengths.tolist())), batch_first=True)


def length_mask(lengths: torch.Tensor) -> torch.Tensor:
    """``(B, max length)`` float mask: 1 on the first ``lengths[i]`` positions of row i."""
    return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).float()


class ReferencePolicy:
    """The reference policy for the KL terms: the policy with its adapters off (LoRA, no ``ref_model``),
    else a frozen model loaded once (``ref_model``, or the model the run started from)."""

    def __init__(self, loop: Any):
        from tunery.train.reference import load_reference

        finetuning = loop.config.finetuning
        self.frozen = None
        if finetuning.finetuning_type != "lora" or finetuning.ref_model:
            self.frozen = load_reference(loop).eval().requires_grad_(False)

    @contextmanager
    def active(self, loop: Any) -> Iterator[torch.nn.Module]:
        if self.frozen is not None:
            yield self.frozen
            return
        with generating(loop) as policy, policy.disable_adapter():
            yield policy

    def logps(self, loop: Any, batch: dict, temperature: float = 1.0) -> torch.Tensor:
        with self.active(loop) as model:
            return chunked_outputs(loop, model, batch, temperature=temperature)[0]


def policy_outputs(loop: Any, batch: dict, with_values: bool = False, temperature: float = 1.0,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The current policy's log-probs (and values) of ``batch``'s completions, no gradients, eval mode."""
    with generating(loop) as model:
        return chunked_outputs(loop, model, batch, with_values, temperature)


class StepMetrics:
    """Weighted running means of logged values since the last ``pop``."""

    def __init__(self):
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        entry = self.sums[name]
        entry[0] += float(value) * weight
        entry[1] += weight

    def add_rollout(self, rollout: Rollout) -> None:
        """reward/mean, reward/std, rewards/<name>, completion_length and generation speed."""
        total, count = rollout.scores.total.float(), len(rollout.completions)
        self.add("reward/mean", float(total.mean()), count)
        self.add("reward/std", float(total.std()) if count > 1 else 0.0, count)
        for name, scores in rollout.scores.per_function.items():
            self.add(f"rewards/{name}", float(scores.float().mean()), count)
        self.add("completion_length", float(rollout.lengths.float().mean()), count)
        self.sums["rollout_tokens"][0] += float(rollout.lengths.sum())
        self.sums["rollout_seconds"][0] += rollout.seconds

    def pop(self) -> dict[str, float]:
        sums, self.sums = self.sums, defaultdict(lambda: [0.0, 0.0])
        tokens, seconds = sums.pop("rollout_tokens", [0.0])[0], sums.pop("rollout_seconds", [0.0])[0]
        values = {name: round(total / weight, 6) for name, (total, weight) in sums.items() if weight}
        if seconds:
            values["rollout_tokens_per_second"] = round(tokens / seconds, 2)
        return values

