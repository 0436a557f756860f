"""Stage ``ppo``: PPO from a reward (Ouyang et al. 2022), with a value head and a KL-penalised reward.

One step collects a buffer of ``ppo_buffer_size`` x ``gradient_accumulation_steps``
micro-batches of rollouts (``per_device_train_batch_size`` prompts each, one
completion per prompt, sampled with the config's generation settings), then runs
``ppo_epochs`` passes over it, each pass ``ppo_buffer_size`` optimizer updates of
``gradient_accumulation_steps`` micro-batches in shuffled order.

For every rollout, without gradients: the policy's log-probs and values (the
value head of ``stage: rm``, on the policy), the reference's log-probs (the
policy with adapters off under LoRA, else a frozen copy). The per-token reward
is :math:`-\\beta\\,(\\log\\pi_{old} - \\log\\pi_{ref})`, plus the sequence's score at its
last token; the score is first normalised by running moments with
``ppo_score_norm``, the per-token rewards are rescaled with ``ppo_whiten_rewards``.
GAE (gamma 1, lambda 0.95) gives advantages (whitened over the buffer) and
returns; the loss per completion token is the clipped policy loss plus 0.1 x the
clipped value loss (TRL's defaults). :math:`\\beta` follows the adaptive KL
controller towards ``ppo_target``. The value head, the KL coefficient and the
score moments are saved with every checkpoint and the final output
(``value_head.safetensors``, ``ppo_state.json``).
"""

import json
from pathlib import Path
from typing import Any

import torch

from tunery.fileio import write_text_atomic
from tunery.losses.rl import (
    PPO_VALUE_COEF,
    AdaptiveKLController,
    RunningMoments,
    gae,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from tunery.train.rollout import (
    completion_outputs,
    experience_batch,
    length_mask,
    padded,
    policy_outputs,
    roll_out,
)
from tunery.train.stages import STAGES
from tunery.train.stages.rl import RLStage
from tunery.train.stages.rm import attach_value_head, load_value_head, save_value_head

STATE_FILE = "ppo_state.json"


@STAGES.register("ppo")
class PPOStage(RLStage):
    name = "ppo"

    def __init__(self, config: Any, tokenizer: Any = None):
        super().__init__(config, tokenizer)
        self.kl_controller = AdaptiveKLController(config.rl.ppo_target)
        self.score_moments = RunningMoments()

    def micro_batches_per_step(self, args: Any) -> int:
        return args.gradient_accumulation_steps * self.config.rl.ppo_buffer_size

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        attach_value_head(model)
        return model

    # ----- experience -----

    def experience_updates(self, loop: Any, window: list) -> list[list]:
        experiences = [self.rollout_experience(loop, batch) for batch, _ in window]
        whiten_advantages(experiences)
        kl = torch.cat([e.pop("sequence_kl") for e in experiences])
        self.metrics.add("kl", float(kl.mean()), kl.numel())
        self.metrics.add("kl_coef", self.kl_controller.value)
        self.kl_controller.update(float(kl.mean()), kl.numel())
        pairs = [(experience, micro) for experience, (_, micro) in zip(experiences, window, strict=True)]
        return self.shuffled_updates(loop, pairs)

    def rollout_experience(self, loop: Any, batch: dict) -> dict:
        rollout = roll_out(loop, self, batch)
        self.metrics.add_rollout(rollout)
        experience = experience_batch(rollout.prompts, rollout.completions, self.pad_id)
        temperature = self.sampling_temperature
        old_logps, old_values = policy_outputs(loop, experience, with_values=True, temperature=temperature)
        ref_logps = self.reference.logps(loop, experience, temperature)
        lengths = experience["completion_lengths"]
        mask = length_mask(lengths)
        kl = padded(kl_penalty(old_logps, ref_logps, "k1"), lengths)
        rewards = -self.kl_controller.value * kl
        scores = self.normalised_scores(rollout.scores.total.float())
        rewards[torch.arange(len(lengths)), lengths - 1] += scores  # the score lands on the last token
        if self.config.rl.ppo_whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, padded(old_values, lengths), mask)
        keep = mask.bool()
        experience.update(old_logps=old_logps, old_values=old_values, advantages=advantages[keep],
                          returns=returns[keep], sequence_kl=(kl * mask).sum(1))
        return experience

    def normalised_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """``ppo_score_norm``: scores standardised with the running moments of all scores so far."""
        if not self.config.rl.ppo_score_norm:
            return scores
        self.score_moments.update(scores)
        return (scores - self.score_moments.mean) / max(self.score_moments.std, 1e-8)

    def shuffled_updates(self, loop: Any, experience: list) -> list[list]:
        """``ppo_epochs`` passes over the buffer, micro-batches shuffled per pass (seeded by the step,
        so a resumed run shuffles alike), cut into updates of ``gradient_accumulation_steps``."""
        accumulation = loop.args.gradient_accumulation_steps
        generator = torch.Generator().manual_seed(loop.args.seed + loop.state.global_step)
        updates = []
        for _ in range(self.config.rl.ppo_epochs):
            order = torch.randperm(len(experience), generator=generator).tolist()
            passes = [experience[index] for index in order]
            updates.extend(passes[i:i + accumulation] for i in range(0, len(passes), accumulation))
        return updates

    # ----- loss -----

    def count_loss_tokens(self, batch: dict) -> int:
        return int(batch["completion_lengths"].sum())  # the loss is a mean over completion tokens

    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
        logps, values = completion_outputs(model, batch, with_values=True,
                                           temperature=self.sampling_temperature)
        device = logps.device
        policy = ppo_policy_loss(logps.float(), batch["old_logps"].to(device), batch["advantages"].to(device))
        value = ppo_value_loss(values, batch["old_values"].to(device), batch["returns"].to(device))
        tokens = logps.shape[0]
        self.metrics.add("policy_loss", float(policy.losses.detach().mean()), tokens)
        self.metrics.add("value_loss", float(value.losses.detach().mean()), tokens)
        self.metrics.add("clip_fraction", float(policy.clipped.mean()), tokens)
        return (policy.losses + PPO_VALUE_COEF * value.losses).sum(), tokens

    # ----- saving -----

    def save_extras(self, model: torch.nn.Module, folder: Any) -> None:
        save_value_head(model, Path(folder))
        moments = self.score_moments
        state = {"kl_coef": self.kl_controller.value,
                 "score_moments": {"mean": moments.mean, "var": moments.var, "count": moments.count}}
        write_text_atomic(Path(folder) / STATE_FILE, json.dumps(state, indent=2) + "\n")

    def load_extras(self, model: torch.nn.Module, folder: Any) -> None:
        load_value_head(model, Path(folder))
        path = Path(folder) / STATE_FILE
        if path.is_file():
            state = json.loads(path.read_text())
            self.kl_controller.value = state["kl_coef"]
            self.score_moments = RunningMoments(**state["score_moments"])


def whiten_advantages(experiences: list[dict]) -> None:
    """Whiten the advantages over the whole buffer (in place), as TRL does over its batch."""
    flat = torch.cat([e["advantages"] for e in experiences])
    whitened = whiten(flat, torch.ones_like(flat)).split([e["advantages"].numel() for e in experiences])
    for experience, advantages in zip(experiences, whitened, strict=True):
        experience["advantages"] = advantages
