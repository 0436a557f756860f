"""Stage ``grpo``: Group Relative Policy Optimisation (Shao et al. 2024), no value model.

Each step, every prompt of the step's micro-batches gets ``num_generations``
sampled completions (one batched ``generate`` per micro-batch, KV cache on).
The reward source scores them; rewards are normalised within each prompt's
group into advantages (a group of equal rewards teaches nothing: advantage 0);
the reference policy's log-probs are computed without gradients when
``grpo_beta`` > 0. Then one optimizer update runs on the experience, with the
clipped objective and the k3 KL penalty of ``losses.rl.grpo_loss``.

``per_device_train_batch_size`` counts prompts: a micro-batch trains on
``batch x num_generations`` completions. With one update per rollout the
sampling policy is the policy being updated, so its log-probs are the current
ones detached (ratio 1, the gradient of the plain policy gradient), as in TRL
with ``num_iterations: 1``; no extra forward pass is spent on them. The loss
is a mean over completions (each normalised by its length, or by
``max_new_tokens`` for ``grpo_loss_type: dr_grpo``).
"""

from typing import Any

import torch

from tunery.data.collate import repeat_prompts
from tunery.errors import ConfigError
from tunery.losses.rl import group_advantages, grpo_loss, kl_penalty
from tunery.train.rollout import completion_outputs, experience_batch, roll_out
from tunery.train.stages import STAGES
from tunery.train.stages.rl import RLStage


@STAGES.register("grpo")
class GRPOStage(RLStage):
    name = "grpo"

    def __init__(self, config: Any, tokenizer: Any = None):
        super().__init__(config, tokenizer)
        generation = config.generation
        if not generation.do_sample or generation.temperature <= 0 or generation.num_beams != 1:
            raise ConfigError("stage: grpo samples several completions per prompt and compares them; set "
                              "do_sample: true, temperature > 0 and num_beams: 1.")

    @property
    def uses_reference(self) -> bool:
        return self.config.rl.grpo_beta > 0

    def experience_updates(self, loop: Any, window: list) -> list[list]:
        return [[(self.group_experience(loop, batch), micro) for batch, micro in window]]

    def group_experience(self, loop: Any, batch: dict) -> dict:
        """Sample the group of every prompt, score it, and build its experience batch."""
        group = self.config.rl.num_generations
        rollout = roll_out(loop, self, repeat_prompts(batch, group))  # a group's samples stay adjacent
        self.metrics.add_rollout(rollout)
        experience = experience_batch(rollout.prompts, rollout.completions, self.pad_id)
        experience["sequence_advantages"] = group_advantages(rollout.scores.total.float(), group)
        if self.reference is not None:
            experience["ref_logps"] = self.reference.logps(loop, experience, self.sampling_temperature)
        return experience

    def count_loss_tokens(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])  # the loss is a mean over completions

    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
        args = self.config.rl
        logps, _ = completion_outputs(model, batch, temperature=self.sampling_temperature)
        lengths = batch["completion_lengths"].to(logps.device)
        sequence_ids = torch.arange(lengths.shape[0], device=logps.device).repeat_interleave(lengths)
        advantages = batch["sequence_advantages"].to(logps.device)[sequence_ids]
        reference = batch.get("ref_logps")
        reference = reference.to(logps.device) if reference is not None else None
        logps = logps.float()
        result = grpo_loss(logps, logps.detach(), reference, advantages, sequence_ids, lengths,
                           args.grpo_beta, args.grpo_epsilon, args.grpo_loss_type,
                           self.config.generation.max_new_tokens)
        tokens = float(lengths.sum())
        self.metrics.add("clip_fraction", float(result.clipped.mean()), tokens)
        self.metrics.add("policy_loss", float(result.losses.detach().mean()), lengths.shape[0])
        if reference is not None:
            self.metrics.add("kl", float(kl_penalty(logps.detach(), reference, "k3").mean()), tokens)
        return result.losses.sum(), lengths.shape[0]
