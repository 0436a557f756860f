"""The ``auto`` template: the tokenizer's own Jinja chat template, with a label mask.

Each message's text is what rendering one more message adds: turn k's prompt is
``render(messages[:k+1], add_generation_prompt=True)`` minus the render of
``messages[:k]``, its response is ``render(messages[:k+2])`` minus that. This
only works for chat templates whose renders of a conversation's prefixes are
prefixes of each other; when one is not (some templates rewrite history, e.g.
drop old thoughts) the error says so and names the alternative.
"""

import json
from dataclasses import dataclass, replace

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates.base import PROMPT_ROLES, Template, check_turns
from tunery.data.templates.formatter import FunctionFormatter
from tunery.data.templates.tools import parse_call_message
from tunery.errors import ConfigError, DataError


@dataclass
class AutoTemplate(Template):
    """Renders with ``tokenizer.apply_chat_template``; ``default_system`` is the one the Jinja inserts."""

    native_system: str = ""  # what the chat template inserts by itself when no system is given

    def encode_turns(
        self, tokenizer, conv: Conversation, discard_history_cot: bool = False
    ) -> list[tuple[list[int], list[int]]]:
        messages = check_turns(conv, ends_with_prompt=False)
        ids = [_encode_text(tokenizer, seg) for seg in self._segments(tokenizer, conv, messages)]
        return [(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)]

    def encode_prompt(self, tokenizer, conv: Conversation) -> list[int]:
        messages = check_turns(conv, ends_with_prompt=True)
        return [i for seg in self._segments(tokenizer, conv, messages) for i in _encode_text(tokenizer, seg)]

    def _segments(self, tokenizer, conv: Conversation, messages: list[Message]) -> list[str]:
        """The text each message adds to the render of the conversation before it."""
        source = tokenizer.chat_template or ""
        tools = _load_tools(conv.tools) if conv.tools else None
        native_tools = tools and "tools" in source
        system = conv.system or (self.default_system if self.default_system != self.native_system else "")
        if tools and not native_tools:  # like LLaMA-Factory: tool text appended to the system prompt
            system = (system or self.native_system) + self.format_tools(conv.tools)
        head = [{"role": "system", "content": system}] if system else []
        hf = head + [self._to_hf(m, source) for m in messages]
        segments, previous = [], ""
        for k, message in enumerate(messages):
            current = _render(tokenizer, hf[: len(head) + k + 1], message.role in PROMPT_ROLES, tools)
            if not current.startswith(previous):
                raise ConfigError(
                    "template: auto cannot derive a label mask from this tokenizer's chat template: "
                    f"rendering message {k} changes the text of earlier messages. "
                    "Set 'template' to a named template."
                )
            segments.append(current[len(previous) :])
            previous = current
        return segments

    def _to_hf(self, message: Message, source: str) -> dict:
        """A Tunery message as the ``{"role", "content"}`` dict chat templates expect."""
        if message.role == Role.FUNCTION_CALL:
            if "tool_calls" not in source:  # the template cannot show calls: write them as text
                return {"role": "assistant", "content": self.format_function.apply_call(message.content)[0]}
            try:
                calls = parse_call_message(message.content)
            except (ValueError, KeyError, TypeError):
                bad = message.content[:80]
                raise DataError(f"function_call message is not valid call JSON: {bad!r}.") from None
            tool_calls = [
                {"type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                for c in calls
            ]
            return {"role": "assistant", "content": "", "tool_calls": tool_calls}
        if message.role == Role.OBSERVATION:
            return {"role": "tool" if "tool" in source else "user", "content": message.content}
        return {"role": str(message.role), "content": message.content}


def _encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def _load_tools(tools_json: str) -> list:
    try:
        tools = json.loads(tools_json)
    except json.JSONDecodeError:
        raise DataError(f"Tool list is not valid JSON: {tools_json[:80]!r}; fix the 'tools' field.") from None
    return tools if isinstance(tools, list) else [tools]


def _render(tokenizer, messages: list[dict], generation_prompt: bool, tools: list | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception as err:  # jinja2 raises many types, and templates raise on purpose
        raise DataError(
            f"The tokenizer's chat template failed on this conversation ({err}); "
            "set 'template' to a named template."
        ) from None


def _insertion(short: str, long: str) -> str:
    """The characters ``long`` has beyond ``short`` when ``short`` is a subsequence of it."""
    i, extra = 0, []
    for char in long:
        if i < len(short) and short[i] == char:
            i += 1
        else:
            extra.append(char)
    return "".join(extra)


def native_default_system(tokenizer) -> str:
    """The system prompt a chat template inserts when the conversation has none ('' if none)."""
    user = [{"role": "user", "content": "{{content}}"}]
    try:
        without = _render(tokenizer, user, True)
        with_empty = _render(tokenizer, [{"role": "system", "content": ""}, *user], True)
    except DataError:
        return ""
    return _insertion(with_empty, without) if len(without) > len(with_empty) else ""


def build_auto_template(base: AutoTemplate, tokenizer, default_system: str | None) -> AutoTemplate:
    """Bind the ``auto`` template to ``tokenizer``; its chat template must exist."""
    if tokenizer is None or not isinstance(getattr(tokenizer, "chat_template", None), str):
        raise ConfigError(
            "template: auto needs the tokenizer's chat template, but this tokenizer has none; "
            "set 'template' to a named template (e.g. default, chatml, llama3, qwen)."
        )
    native = native_default_system(tokenizer)
    tool_format = "qwen" if "<tool_call>" in tokenizer.chat_template else "default"
    return replace(
        base,
        native_system=native,
        default_system=native if default_system is None else default_system,
        tool_format=tool_format,
        format_function=FunctionFormatter(base.format_function.slots, tool_format=tool_format),
    )
