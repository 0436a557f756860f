"""The one typed shape every dataset row is converted into.

Converters (alpaca, sharegpt, openai, plain text) produce these; templates
render them into token ids. Keeping the shape small and strict means a template
never has to guess what a row meant.
"""

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    FUNCTION_CALL = "function_call"  # the assistant asking for a tool; content is JSON
    OBSERVATION = "observation"  # the tool's answer, shown to the model as input


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass
class Conversation:
    """One training example for chat-style stages.

    ``messages`` alternate prompt-side (user/observation) and response-side
    (assistant/function_call) turns, starting with a prompt-side turn; an SFT
    example ends with a response-side turn. ``tools`` is the JSON text of the
    tool list, as LLaMA-Factory's datasets store it. For ranking datasets
    ``chosen`` and ``rejected`` hold the two candidate final responses and
    ``messages`` ends with a prompt-side turn.
    """

    messages: list[Message]
    system: str = ""
    tools: str = ""
    chosen: Message | None = None
    rejected: Message | None = None
    extra: dict = field(default_factory=dict)

    def pairs(self) -> list[tuple[Message, Message]]:
        """The (prompt, response) turn pairs, in order."""
        msgs = self.messages
        return [(msgs[i], msgs[i + 1]) for i in range(0, len(msgs) - 1, 2)]


@dataclass
class Document:
    """One plain-text example for pre-training."""

    text: str
