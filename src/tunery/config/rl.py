"""Config of the reinforcement-learning stages: PPO (``stage: ppo``) and GRPO (``stage: grpo``).

Key names follow LLaMA-Factory (``reward_model*``, ``ppo_*``) and, for GRPO, which
LLaMA-Factory lacks, TRL's ``GRPOConfig`` (``num_generations``, ``reward_funcs``).
"""

from typing import Literal

from pydantic import Field, field_validator

from tunery.config.section import Section, split_names


class RLArgs(Section):
    reward_model: str | None = Field(
        None, description="PPO: reward model (a `stage: rm` output folder, a model, or the /v1/score URL)."
    )
    reward_model_adapters: list[str] | None = Field(
        None, description="PPO: adapters of the reward model (with reward_model_type: lora)."
    )
    reward_model_type: Literal["lora", "full", "api"] = Field(
        "lora", description="PPO: how reward_model is given: LoRA adapter, full model, or HTTP scoring API."
    )
    reward_funcs: list[str] | None = Field(
        None,
        description="Reward functions: built-in names or `file.py:function` (comma separated).",
    )
    reward_weights: list[float] | None = Field(
        None, description="Weight of each reward function (default: 1 each)."
    )
    ppo_buffer_size: int = Field(1, gt=0, description="PPO: batches of rollouts collected per update.")
    ppo_epochs: int = Field(4, gt=0, description="PPO: optimisation passes over each rollout buffer.")
    ppo_score_norm: bool = Field(False, description="PPO: normalise the rewards (running mean and std).")
    ppo_target: float = Field(6.0, gt=0, description="PPO: target KL of the adaptive KL controller.")
    ppo_whiten_rewards: bool = Field(False, description="PPO: whiten the per-token rewards before GAE.")
    num_generations: int = Field(4, ge=2, description="GRPO: completions sampled per prompt (the group).")
    grpo_beta: float = Field(0.04, ge=0, description="GRPO: weight of the KL penalty to the reference.")
    grpo_epsilon: float = Field(0.2, gt=0, description="GRPO: clipping range of the probability ratio.")
    grpo_loss_type: Literal["grpo", "dr_grpo"] = Field(
        "grpo", description="GRPO: per-sequence length normalisation (grpo) or a constant one (dr_grpo)."
    )

    _split_lists = field_validator("reward_model_adapters", "reward_funcs", mode="before")(split_names)

    @field_validator("reward_weights", mode="before")
    @classmethod
    def weights_as_list(cls, value: object) -> object:
        """``reward_weights: 2`` (one function) as well as ``1.0, 0.5`` or a YAML list."""
        if isinstance(value, int | float):
            return [value]
        return split_names(value)
