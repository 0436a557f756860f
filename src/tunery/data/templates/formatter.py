"""Slots and formatters: the pieces a template is written in.

A formatter holds a tuple of *slots*. A slot is plain text (which may contain
``{{content}}``), a named special token (``Token("<|user|>")``, looked up by
name so it never depends on how the text would tokenize), or the tokenizer's
``BOS`` / ``EOS`` (resolved at encode time, so a replaced eos token is honoured).
Each text slot is tokenized on its own, exactly as LLaMA-Factory does, which is
why the slot boundaries of a template are part of its definition.
"""

import json
import re
from dataclasses import dataclass

from tunery.data.templates.tools import TOOL_FORMATS, parse_call_message


@dataclass(frozen=True)
class Token:
    """A special token written by name (converted with ``convert_tokens_to_ids``)."""

    name: str


@dataclass(frozen=True)
class Special:
    """The tokenizer's own bos/eos token; skipped when the tokenizer has none."""

    which: str  # "bos" or "eos"


BOS = Special("bos")
EOS = Special("eos")
Slot = str | Token | Special
PLACEHOLDER = re.compile(r"\{\{[a-zA-Z_][a-zA-Z0-9_]*\}\}")


@dataclass(frozen=True)
class Formatter:
    """Fills ``{{name}}`` placeholders in the text slots; other slots pass through."""

    slots: tuple[Slot, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "slots", tuple(self.slots))

    def apply(self, **values: str) -> list[Slot]:
        out: list[Slot] = []
        for slot in self.slots:
            if isinstance(slot, str):
                # one replacement per name, in keyword order, like LLaMA-Factory
                for name, value in values.items():
                    slot = slot.replace("{{" + name + "}}", value, 1)
            out.append(slot)
        return out

    def has_placeholder(self) -> bool:
        return any(isinstance(s, str) and PLACEHOLDER.search(s) for s in self.slots)


def text(*slots: Slot) -> Formatter:
    """Shorthand used by the template definitions."""
    return Formatter(tuple(slots))


@dataclass(frozen=True)
class FunctionFormatter(Formatter):
    """Renders an assistant's tool request (JSON in the dataset) in the family's call format.

    A thought block (``<think>...</think>``) before the call is kept in front of the
    rendered call; if the content already carries ``<tool_call>...</tool_call>`` the
    JSON inside it is used and the text around it is kept as the thought.
    """

    tool_format: str = "default"

    def apply_call(
        self,
        content: str,
        thought_words: tuple[str, str] | None = None,
        tool_call_words: tuple[str, str] | None = None,
    ) -> list[Slot]:
        tool_call_match = None
        if tool_call_words:
            open_, close = map(re.escape, tool_call_words)
            tool_call_match = re.search(rf"{open_}(.*?){close}", content, re.DOTALL)
        if tool_call_match is not None:
            prefix = content.replace(tool_call_match.group(0), "")
            rendered = prefix + self._render(tool_call_match.group(1))
            return self.apply(content=rendered)

        thought_match = None
        if thought_words:
            open_, close = map(re.escape, thought_words)
            thought_match = re.search(rf"{open_}(.*?){close}", content, re.DOTALL)
        if thought_match is None:
            return self.apply(content=self._render(content))
        body = content.replace(thought_match.group(0), "")
        return self.apply(content=thought_match.group(0) + self._render(body))

    def _render(self, json_text: str) -> str:
        try:
            calls = parse_call_message(json_text)
        except json.JSONDecodeError:
            raise ValueError(f"invalid JSON in function call message: {json_text!r}") from None
        except (KeyError, TypeError):
            raise ValueError(f"function call needs 'name' and 'arguments': {json_text!r}") from None
        return TOOL_FORMATS.get(self.tool_format).format_calls(calls)
