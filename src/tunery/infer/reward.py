"""Scoring with a trained reward model (stage ``rm``): one scalar reward per answer or text.

``RewardScorer`` is the train layer's ``RewardModel`` (which loads the model and
its value head and scores conversations exactly as the rm stage does; see
``tunery.train.reward_model``) plus what the front ends need on top: raw texts,
scored as LLaMA-Factory's API scores them (tokenized without special tokens, the
value at the last token), and freeing the model's memory on close.
"""

from collections.abc import Sequence
from pathlib import Path

from tunery.data.conversation import Conversation
from tunery.data.converters import convert_openai
from tunery.data.registry import OPENAI_TAGS, DatasetSpec
from tunery.errors import DataError
from tunery.infer.engine import release_model
from tunery.train.reward_model import (  # noqa: F401 - re-exported for the CLI and the API server
    ANSWER_ROLES,
    RewardModel,
    check_conversation,
    is_reward_model,
    no_value_head_message,
    value_head_folder,
)


class RewardScorer(RewardModel):
    """A reward model loaded once; scores conversations or raw texts in batches."""

    def encode_text(self, text: str, max_length: int) -> list[int]:
        """Raw text, no special tokens added, its first ``max_length`` tokens (LLaMA-Factory's API)."""
        return self.tokenizer.encode(text, add_special_tokens=False)[:max_length]

    def score_texts(self, texts: Sequence[str], max_length: int | None = None) -> list[float]:
        """The reward of each raw text (no chat template): the value at its last token."""
        budget = max_length or self.config.data.cutoff_len
        rows = []
        for index, text in enumerate(texts):
            ids = self.encode_text(text, budget)
            if not ids:
                raise DataError(f"Text {index + 1} is empty; there is nothing to score.")
            rows.append(ids)
        return self.score_ids(rows)

    def close(self) -> None:
        """Free the weights (a server or the web UI may load another model next)."""
        with self.lock:
            release_model(self)

    def __enter__(self) -> "RewardScorer":
        return self


SCORE_INPUT_SPEC = DatasetSpec(
    name="score input", path=Path("."), formatting="openai",
    columns={"messages": "messages", "tools": "tools", "system": "system"}, tags=dict(OPENAI_TAGS),
)


def conversation_from_openai(row: dict) -> Conversation:
    """``{"messages": [{"role", "content"}, ...], "tools"?: ...}`` (OpenAI style, an optional system
    message first, the answer to score last) as a Conversation; ``RowError`` says what is wrong."""
    return convert_openai(row, SCORE_INPUT_SPEC)
