"""Where the RL stages get rewards: reward functions, a reward model, or an HTTP scoring API.

``create_reward_source(config, tokenizer, template)`` reads the ``rl`` section:

- ``reward_model`` unset: the ``reward_funcs`` with their ``reward_weights``
  (``tunery.rewards.RewardSet``).
- ``reward_model_type: lora`` (default): ``reward_model`` is the output_dir of a
  ``stage: rm`` LoRA run (adapter + ``value_head.safetensors``) on the policy's own
  base model ``model_name_or_path``; ``reward_model_adapters``, if given, are merged
  first (e.g. the SFT adapter the rm run started from). A second copy of the base
  model is loaded for it, adapters merged, in evaluation mode.
- ``full``: ``reward_model`` is a model folder holding a value head (a full-tuning
  rm run), with ``reward_model_adapters`` merged on it if given (the value head
  then comes from the last adapter's folder); it is prompted with the run's template.
- ``api``: ``reward_model`` is the address of a ``tunery api`` server started on a
  reward model (``http://host:8000``; ``.../v1`` and ``.../v1/score`` work too):
  each completion is POSTed to ``/v1/score`` as a chat conversation, which the
  server renders with its own template. ``Authorization: Bearer $API_KEY`` is sent
  when the ``API_KEY`` environment variable is set (the variable ``tunery api`` reads).

A reward model scores the prompt's turns followed by the completion as the
assistant's answer, exactly as the rm stage scored its pairs. When both a
reward model and ``reward_funcs`` are given, the reward is the model's score
(weight 1) plus the functions' weighted sum; ``reward_weights`` weight the
functions only. Every source returns ``tunery.rewards.RewardScores``.
"""

import json
import logging
import os
from collections.abc import Sequence

import httpx
import torch

from tunery.config import RunConfig
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.encode import conversation_from_json
from tunery.errors import ConfigError, RewardError
from tunery.rewards import RewardScores, RewardSet, RewardSource, load_rewards
from tunery.rewards.combine import check_lengths
from tunery.train.reward_model import RewardModel

logger = logging.getLogger(__name__)

RL_STAGES = ("ppo", "grpo")
MODEL_REWARD = "reward_model"  # the name a reward model's scores are logged under (rewards/reward_model)
API_TIMEOUT_S = 300.0


def create_reward_source(config: RunConfig, tokenizer, template) -> RewardSource | None:
    """The reward source of an RL run (None for any other stage); ConfigError when there is none."""
    if config.finetuning.stage not in RL_STAGES:
        return None
    rl = config.rl
    functions = load_rewards(rl) if rl.reward_funcs else None
    if rl.reward_model is None:
        if functions is None:
            raise ConfigError(f"stage {config.finetuning.stage} needs reward_funcs or reward_model: name "
                              "reward functions (e.g. reward_funcs: item_count) or a `stage: rm` output.")
        if rl.reward_model_adapters:
            raise ConfigError("reward_model_adapters is set but reward_model is not; set reward_model too.")
        return functions
    if rl.reward_weights is not None and functions is None:
        raise ConfigError("reward_weights weight reward_funcs, but no reward_funcs are given; remove "
                          "reward_weights (a reward model's score has weight 1).")
    if rl.reward_model_type == "api":
        model: RewardSource = ApiRewardSource(rl.reward_model)
    else:
        model = ModelRewardSource(config, tokenizer, template)
    return model if functions is None else CombinedSource([model, functions])


# ----- which conversation a completion answers -----------------------------------------------------------


def prompt_conversation(prompt: str, columns: dict[str, Sequence], row: int) -> Conversation:
    """The turns a completion answers: the row's ``conversation`` column (a Conversation or its JSON,
    see ``data.collate.collate_prompts``), else a single user turn holding the prompt text."""
    conversations = columns.get("conversation")
    if conversations is None:
        return Conversation(messages=[Message(Role.USER, prompt)])
    conv = conversations[row]
    return conversation_from_json(conv) if isinstance(conv, str) else conv


def answered(conv: Conversation, completion: str) -> Conversation:
    return Conversation(messages=[*conv.messages, Message(Role.ASSISTANT, completion)], system=conv.system,
                        tools=conv.tools)


# ----- a reward model in this process --------------------------------------------------------------------


def reward_model_config(config: RunConfig) -> RunConfig:
    """The run's config with its model section describing the reward model (see the module doc)."""
    rl = config.rl
    derived = config.model_copy(deep=True)
    extra = list(rl.reward_model_adapters or [])
    if rl.reward_model_type == "lora":
        derived.model.adapter_name_or_path = [*extra, rl.reward_model]
    else:
        derived.model.model_name_or_path = rl.reward_model
        derived.model.adapter_name_or_path = extra or None
    return derived


class ModelRewardSource:
    """A ``stage: rm`` model loaded beside the policy; scores each prompt + completion."""

    def __init__(self, config: RunConfig, tokenizer=None, template=None):
        self.names = [MODEL_REWARD]
        derived = reward_model_config(config)
        same_tokenizer = config.rl.reward_model_type == "lora"  # the policy's base model, its tokenizer
        self.model = RewardModel(derived, tokenizer if same_tokenizer else None,
                                 template if same_tokenizer else None)
        logger.info("Rewards from the reward model %s (%s)", config.rl.reward_model,
                    config.rl.reward_model_type)

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              columns: dict[str, Sequence] | None = None) -> RewardScores:
        columns = dict(columns or {})
        check_lengths(prompts, completions, columns)
        conversations = [answered(prompt_conversation(prompt, columns, row), completion)
                         for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True))]
        scores = torch.tensor(self.model.score_conversations(conversations), dtype=torch.float32)
        return RewardScores(total=scores.clone(), per_function={MODEL_REWARD: scores})

    def close(self) -> None:
        self.model.close()


# ----- a reward model behind `tunery api` ----------------------------------------------------------------

OPENAI_ROLES = {Role.USER: "user", Role.ASSISTANT: "assistant"}


def api_base(url: str) -> str:
    """``http://host:8000``, ``.../v1`` or ``.../v1/score`` -> ``http://host:8000``."""
    base = url.strip().rstrip("/")
    for suffix in ("/v1/score/evaluation", "/v1/score", "/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def to_openai(conv: Conversation) -> list[dict]:
    """A scored conversation in the shape ``/v1/score`` takes (system first, then user/assistant)."""
    messages = [{"role": "system", "content": conv.system}] if conv.system else []
    for message in conv.messages:
        if message.role not in OPENAI_ROLES:
            raise RewardError(f"The api reward source scores user/assistant conversations; this prompt has a "
                              f"'{message.role.value}' turn. Use reward_model_type: lora or full for it.")
        messages.append({"role": OPENAI_ROLES[message.role], "content": message.content})
    return messages


class ApiRewardSource:
    """Rewards from ``POST {url}/v1/score`` of a ``tunery api`` reward-model server."""

    def __init__(self, url: str, client: httpx.Client | None = None):
        self.names = [MODEL_REWARD]
        self.base = api_base(url)
        key = os.environ.get("API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(timeout=API_TIMEOUT_S)
        self.client.headers.update(headers)
        self.model_name = self.served_model()
        logger.info("Rewards from %s/v1/score (model '%s')", self.base, self.model_name)

    def served_model(self) -> str:
        """The model name the server answers to (its /v1/models list), needed by every request."""
        try:
            response = self.client.get(f"{self.base}/v1/models")
        except httpx.HTTPError as err:
            raise ConfigError(f"reward_model: cannot reach the scoring API at {self.base} ({describe(err)}); "
                              "start `tunery api` with a `stage: rm` output (or fix the address).") from None
        if response.status_code != 200:
            hint = " Set API_KEY to the server's key." if response.status_code == 401 else ""
            raise ConfigError(f"reward_model: the scoring API at {self.base} answered "
                              f"{response.status_code}: {error_message(response)}.{hint}")
        try:
            return response.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ConfigError(f"reward_model: {self.base} is not a `tunery api` server (its /v1/models "
                              "answer lists no model).") from None

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              columns: dict[str, Sequence] | None = None) -> RewardScores:
        columns = dict(columns or {})
        check_lengths(prompts, completions, columns)
        conversations = [to_openai(answered(prompt_conversation(prompt, columns, row), completion))
                         for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True))]
        scores = self.post(conversations)
        if len(scores) != len(completions) or not all(isinstance(s, int | float) for s in scores):
            raise RewardError(f"The scoring API at {self.base} answered {json.dumps(scores)[:200]} for "
                              f"{len(completions)} completions; expected one number each.")
        tensor = torch.tensor([float(s) for s in scores], dtype=torch.float32)
        return RewardScores(total=tensor.clone(), per_function={MODEL_REWARD: tensor})

    def post(self, conversations: list[list[dict]]) -> list:
        body = {"model": self.model_name, "conversations": conversations}
        try:
            response = self.client.post(f"{self.base}/v1/score", json=body)
        except httpx.HTTPError as err:
            raise RewardError(f"The scoring API at {self.base} failed: {describe(err)}.") from None
        if response.status_code != 200:
            raise RewardError(f"The scoring API at {self.base} answered {response.status_code}: "
                              f"{error_message(response)} (first conversation: "
                              f"{json.dumps(conversations[0], ensure_ascii=False)[:200]}).")
        return response.json().get("scores", [])

    def close(self) -> None:
        self.client.close()


def describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


# ----- a reward model and reward functions together ------------------------------------------------------


class CombinedSource:
    """The sum of several sources' totals; every source's per-function scores are kept for logging."""

    def __init__(self, sources: Sequence[RewardSource]):
        self.sources = list(sources)

    @property
    def names(self) -> list[str]:
        return [name for source in self.sources for name in source.names]

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              columns: dict[str, Sequence] | None = None) -> RewardScores:
        total = torch.zeros(len(completions), dtype=torch.float32)
        per_function: dict[str, torch.Tensor] = {}
        for source in self.sources:
            scores = source.score(prompts, completions, columns)
            total += scores.total
            per_function.update(scores.per_function)
        return RewardScores(total=total, per_function=per_function)

    def close(self) -> None:
        for source in self.sources:
            if hasattr(source, "close"):
                source.close()


__all__ = ["ApiRewardSource", "CombinedSource", "ModelRewardSource", "RewardSet", "create_reward_source"]
