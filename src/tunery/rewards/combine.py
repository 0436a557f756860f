"""Several reward functions combined with weights: ``RewardSet.score`` -> ``RewardScores``.

``total`` is the weighted sum :math:`r = \\sum_k w_k\\, r_k` (the number the RL
stages optimise); ``per_function`` keeps each function's own, unweighted score
for logging (``rewards/<name>``). A function that raises, returns the wrong
number of scores or a non-number (None, text, NaN, infinity) stops the run with
a ``RewardError`` that names the function and quotes the prompt and completion
that caused it: a broken reward would otherwise train the policy on garbage.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from tunery.config.rl import RLArgs
from tunery.errors import ConfigError, RewardError
from tunery.rewards.builtin import BUILTIN_REWARDS, RewardFunction
from tunery.rewards.user import is_user_reward, load_user_reward

QUOTE_CHARS = 200  # how much of a prompt or completion an error message quotes


@dataclass
class RewardScores:
    """Rewards of n completions: the weighted ``total`` and each source's own scores, float32 ``[n]``."""

    total: torch.Tensor
    per_function: dict[str, torch.Tensor] = field(default_factory=dict)


class RewardSource(Protocol):
    """Anything the RL stages take rewards from: reward functions, a reward model, an API."""

    names: list[str]

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              columns: dict[str, Sequence]) -> RewardScores: ...


@dataclass
class NamedReward:
    name: str
    function: RewardFunction
    weight: float


class RewardSet:
    """Reward functions with weights; ``score`` calls each once per batch and checks what comes back."""

    def __init__(self, rewards: Sequence[NamedReward]):
        if not rewards:
            raise ConfigError("A reward set needs at least one reward function.")
        self.rewards = list(rewards)

    @property
    def names(self) -> list[str]:
        return [reward.name for reward in self.rewards]

    @property
    def weights(self) -> list[float]:
        return [reward.weight for reward in self.rewards]

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              columns: dict[str, Sequence] | None = None) -> RewardScores:
        """Score completion i (an answer to prompts[i]; columns[key][i] are its row's values)."""
        columns = dict(columns or {})
        check_lengths(prompts, completions, columns)
        total = torch.zeros(len(completions), dtype=torch.float32)
        per_function = {}
        for reward in self.rewards:
            scores = call_reward(reward, list(prompts), list(completions), columns)
            per_function[reward.name] = scores
            total += reward.weight * scores
        return RewardScores(total=total, per_function=per_function)


def check_lengths(prompts: Sequence, completions: Sequence, columns: dict[str, Sequence]) -> None:
    """One prompt and one value of every column per completion (repeat them for a group of samples)."""
    counts = {"prompts": len(prompts), **{key: len(values) for key, values in columns.items()}}
    wrong = {key: count for key, count in counts.items() if count != len(completions)}
    if wrong:
        raise ValueError(f"Rewards need one value per completion ({len(completions)}); got {wrong}. "
                         "Repeat each prompt's row once per completion sampled for it.")


def call_reward(reward: NamedReward, prompts: list[str], completions: list[str],
                columns: dict[str, Sequence]) -> torch.Tensor:
    try:
        scores = reward.function(prompts, completions, **columns)
    except Exception as err:  # the user's code: report it with the row that made it fail
        row = find_failing_row(reward, prompts, completions, columns)
        raise RewardError(f"Reward function '{reward.name}' raised {type(err).__name__}: {err} "
                          f"({describe_row(prompts, completions, row)}).") from err
    return check_scores(reward.name, scores, prompts, completions)


def find_failing_row(reward: NamedReward, prompts: list[str], completions: list[str],
                     columns: dict[str, Sequence]) -> int | None:
    """The first row that fails on its own (None if every row passes alone)."""
    for row in range(len(completions)):
        one = {key: list(values[row:row + 1]) for key, values in columns.items()}
        try:
            reward.function(prompts[row:row + 1], completions[row:row + 1], **one)
        except Exception:  # looking for the row only; the caller reports the error
            return row
    return None


def check_scores(name: str, scores: object, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """A float32 tensor of one finite number per completion, or a RewardError saying what is wrong."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().flatten().tolist()
    listlike = isinstance(scores, Sequence) or hasattr(scores, "tolist")  # lists, tuples, numpy arrays
    if not listlike or isinstance(scores, str | bytes):
        raise RewardError(f"Reward function '{name}' returned a {type(scores).__name__}; it must return a "
                          f"list of {len(completions)} numbers, one per completion.")
    values = list(scores.tolist() if hasattr(scores, "tolist") else scores)
    if len(values) != len(completions):
        first = f"batch starting with {describe_row(prompts, completions, 0)}" if completions else "no rows"
        raise RewardError(f"Reward function '{name}' returned {len(values)} scores for {len(completions)} "
                          f"completions; it must return one number per completion ({first}).")
    for row, value in enumerate(values):
        if not is_number(value):
            raise RewardError(f"Reward function '{name}' returned {value!r} (not a finite number) for "
                              f"{describe_row(prompts, completions, row)}.")
    return torch.tensor([float(value) for value in values], dtype=torch.float32)


def is_number(value: object) -> bool:
    """A finite real number (bools count: True is 1.0); text never counts, even "1"."""
    if isinstance(value, str | bytes) or value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def describe_row(prompts: list[str], completions: list[str], row: int | None) -> str:
    if row is None:
        return f"on a batch of {len(completions)} completions; each alone passes, starting with " \
               f"{describe_row(prompts, completions, 0)}"
    return f"prompt {quote(prompts[row])}, completion {quote(completions[row])}"


def quote(text: object) -> str:
    text = str(text)
    return repr(text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "...")


# ----- from the config ----------------------------------------------------------------------------------


def load_rewards(rl_args: RLArgs, base_dir: Path | None = None) -> RewardSet:
    """The ``reward_funcs`` of the config with their ``reward_weights`` (1 each by default).

    Names are built-ins (``exact_match``, ``regex:PATTERN``...) or ``file.py:function`` (relative to
    ``base_dir``, else the current directory).
    """
    specs = list(rl_args.reward_funcs or [])
    if not specs:
        raise ConfigError("No reward_funcs given; name built-in rewards (e.g. 'exact_match') or "
                          "'file.py:function'.")
    weights = list(rl_args.reward_weights) if rl_args.reward_weights is not None else [1.0] * len(specs)
    if len(weights) != len(specs):
        raise ConfigError(f"reward_weights has {len(weights)} values but reward_funcs names {len(specs)} "
                          "functions; give one weight per function, in the same order.")
    if not all(math.isfinite(weight) for weight in weights):
        raise ConfigError(f"reward_weights must be finite numbers; got {weights}.")
    rewards: list[NamedReward] = []
    for spec, weight in zip(specs, weights, strict=True):
        name, function = resolve_reward(spec, base_dir)
        rewards.append(NamedReward(unique_name(name, rewards), function, float(weight)))
    return RewardSet(rewards)


def resolve_reward(spec: str, base_dir: Path | None) -> tuple[str, RewardFunction]:
    """(log name, function) of one ``reward_funcs`` entry."""
    spec = spec.strip()
    if is_user_reward(spec):
        return spec.rpartition(":")[2], load_user_reward(spec, base_dir)
    name, colon, argument = spec.partition(":")
    if name not in BUILTIN_REWARDS:
        message = BUILTIN_REWARDS.describe_miss(name)
        raise ConfigError(f"reward_funcs: {message} A function of your own is written 'file.py:function'.")
    return name, BUILTIN_REWARDS.get(name)(argument if colon else None)


def unique_name(name: str, taken: list[NamedReward]) -> str:
    names = {reward.name for reward in taken}
    if name not in names:
        return name
    suffix = 2
    while f"{name}_{suffix}" in names:
        suffix += 1
    return f"{name}_{suffix}"
