"""Rewards for the RL stages (``stage: ppo`` and ``stage: grpo``): built-in and user reward functions.

``load_rewards(config.rl)`` turns ``reward_funcs`` / ``reward_weights`` into a
``RewardSet``; its ``score(prompts, completions, columns)`` returns
``RewardScores`` (the weighted total and each function's scores). Reward models
(a ``stage: rm`` output or an HTTP scoring API) are sources of the same shape,
built in ``tunery.train.reward_sources``.
"""

from tunery.rewards.builtin import BUILTIN_REWARDS, RewardFunction
from tunery.rewards.combine import NamedReward, RewardScores, RewardSet, RewardSource, load_rewards

__all__ = ["BUILTIN_REWARDS", "NamedReward", "RewardFunction", "RewardScores", "RewardSet", "RewardSource",
           "load_rewards"]
