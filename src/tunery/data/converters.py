"""Dataset rows (alpaca | sharegpt | openai) -> one typed ``Conversation``.

The semantics are LLaMA-Factory's: alpaca joins ``instruction`` and ``input``
with a newline into the user turn and prepends ``history`` pairs; sharegpt maps
``from``/``value`` tags onto roles and requires user/observation turns at odd
positions and assistant/function_call turns at even ones; openai is the same
with ``role``/``content`` keys, plus OpenAI ``tool_calls`` and ``tool`` turns.
Ranking rows keep ``chosen``/``rejected`` apart from the prompt turns.

A malformed row raises ``RowError`` with a short reason; the pipeline skips and
counts it. ``{{name}}``-style placeholders (LLaMA-Factory's identity.json) are
text like any other and are kept as they are.
"""

import json
from collections.abc import Callable
from typing import Any

from tunery.data.conversation import Conversation, Document, Message, Role
from tunery.data.registry import DatasetSpec
from tunery.registry import Registry

Converter = Callable[[dict, DatasetSpec], Conversation]
CONVERTERS: Registry[Converter] = Registry("dataset formatting")

PROMPT_ROLES = (Role.USER, Role.OBSERVATION)
RESPONSE_ROLES = (Role.ASSISTANT, Role.FUNCTION_CALL)


class RowError(ValueError):
    """Why one row cannot be used; the pipeline reports it with the row's file and number."""


def to_conversation(row: dict, spec: DatasetSpec) -> Conversation:
    """Convert one row of ``spec``'s dataset, or raise ``RowError``."""
    return CONVERTERS.get(spec.formatting)(row, spec)


def to_document(row: dict, spec: DatasetSpec) -> Document:
    """The pre-training text of a row: the prompt column (alpaca) or the first turn (sharegpt)."""
    if spec.formatting == "alpaca":
        text = join_query(row, spec)
    else:
        messages = require_list(row, spec.column("messages"))
        contents = [m.get(spec.tags["content_tag"]) for m in messages
                    if isinstance(m, dict) and m.get(spec.tags["role_tag"]) != spec.tags["system_tag"]]
        text = contents[0] if contents and isinstance(contents[0], str) else ""
    if not text.strip():
        raise RowError(f"empty text in column '{spec.column('prompt') or spec.column('messages')}'")
    return Document(text=text)


def text_of(row: dict, column: str | None, what: str) -> str:
    """A text cell: missing/None -> "", a string -> itself, anything else -> RowError."""
    if not column:
        return ""
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"{what} column '{column}' holds a {type(value).__name__}, not text")
    return value


def tools_of(row: dict, spec: DatasetSpec) -> str:
    column = spec.column("tools")
    value = row.get(column) if column else None
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def kto_extra(row: dict, spec: DatasetSpec) -> dict:
    column = spec.column("kto_tag")
    if column and isinstance(row.get(column), bool):
        return {"kto_tag": row[column]}
    return {}


def join_query(row: dict, spec: DatasetSpec) -> str:
    prompt_column = spec.column("prompt")
    if prompt_column and prompt_column not in row:  # absent, not empty: the columns mapping is wrong
        raise RowError(f"prompt column '{prompt_column}' is missing")
    parts = [text_of(row, spec.column("prompt"), "prompt"), text_of(row, spec.column("query"), "query")]
    return "\n".join(part for part in parts if part)


@CONVERTERS.register("alpaca")
def convert_alpaca(row: dict, spec: DatasetSpec) -> Conversation:
    messages = history_messages(row, spec)
    messages.append(Message(Role.USER, join_query(row, spec)))
    conv = Conversation(messages=messages, system=text_of(row, spec.column("system"), "system"),
                        tools=tools_of(row, spec), extra=kto_extra(row, spec))
    if spec.ranking:
        conv.chosen = Message(Role.ASSISTANT, required_text(row, spec.column("chosen"), "chosen"))
        conv.rejected = Message(Role.ASSISTANT, required_text(row, spec.column("rejected"), "rejected"))
        return conv
    response = required_text(row, spec.column("response"), "response")
    if not response.strip():  # almost always a data mistake; training on it teaches silence
        raise RowError(f"response column '{spec.column('response')}' is empty")
    conv.messages.append(Message(Role.ASSISTANT, response))
    return conv


def required_text(row: dict, column: str | None, what: str) -> str:
    if not column or not isinstance(row.get(column), str):
        found = "is missing" if not column or row.get(column) is None else "is not text"
        raise RowError(f"{what} column '{column}' {found}")
    return row[column]


def history_messages(row: dict, spec: DatasetSpec) -> list[Message]:
    column = spec.column("history")
    history = row.get(column) if column else None
    if not history:
        return []
    if not isinstance(history, list):
        raise RowError(f"history column '{column}' must be a list of [query, response] pairs")
    messages = []
    for number, pair in enumerate(history, start=1):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise RowError(f"history item {number} is not a [query, response] pair of texts")
        messages += [Message(Role.USER, pair[0]), Message(Role.ASSISTANT, pair[1])]
    return messages


def require_list(row: dict, column: str | None) -> list:
    value = row.get(column) if column else None
    if not isinstance(value, list):
        found = "is missing" if value is None else f"holds a {type(value).__name__}"
        raise RowError(f"messages column '{column}' {found}, expected a list of turns")
    return value


def tag_roles(spec: DatasetSpec) -> dict[Any, Role]:
    tags = spec.tags
    return {tags["user_tag"]: Role.USER, tags["assistant_tag"]: Role.ASSISTANT,
            tags["observation_tag"]: Role.OBSERVATION, tags["function_tag"]: Role.FUNCTION_CALL}


def split_system(turns: list[tuple[Any, Any]], row: dict, spec: DatasetSpec) -> tuple[str, list]:
    """A leading system-tagged turn is the system prompt; otherwise the system column is."""
    if turns and spec.tags.get("system_tag") and turns[0][0] == spec.tags["system_tag"]:
        if not isinstance(turns[0][1], str):
            raise RowError("the system turn's content is not text")
        return turns[0][1], turns[1:]
    return text_of(row, spec.column("system"), "system"), turns


def build_turns(turns: list[tuple[Any, Any]], spec: DatasetSpec) -> list[Message]:
    """Map tags to roles, checking the odd/even alternation LLaMA-Factory requires."""
    roles = tag_roles(spec)
    messages = []
    for number, (tag, content) in enumerate(turns, start=1):
        expected = PROMPT_ROLES if number % 2 == 1 else RESPONSE_ROLES
        role = roles.get(tag)
        if role not in expected:
            side = "user/observation" if number % 2 == 1 else "assistant/function_call"
            raise RowError(f"turn {number} has role '{tag}' where a {side} turn was expected")
        if not isinstance(content, str):
            raise RowError(f"turn {number} has no text content")
        messages.append(Message(role, content))
    return messages


def finish_chat(messages: list[Message], system: str, row: dict, spec: DatasetSpec,
                candidate: Callable[[Any], Message]) -> Conversation:
    """Check the turn count and attach chosen/rejected for ranking rows."""
    conv = Conversation(messages=messages, system=system, tools=tools_of(row, spec),
                        extra=kto_extra(row, spec))
    if not spec.ranking:
        if not messages or len(messages) % 2:
            raise RowError(f"{len(messages)} turns; a conversation needs user/assistant pairs "
                           "ending with an assistant turn")
        return conv
    if len(messages) % 2 == 0:
        raise RowError(f"{len(messages)} turns; a ranking prompt must end with a user turn")
    conv.chosen = candidate(row.get(spec.column("chosen") or ""))
    conv.rejected = candidate(row.get(spec.column("rejected") or ""))
    return conv


def sharegpt_pairs(messages: list, spec: DatasetSpec) -> list[tuple[Any, Any]]:
    role_tag, content_tag = spec.tags["role_tag"], spec.tags["content_tag"]
    if not all(isinstance(m, dict) for m in messages):
        raise RowError("every turn must be an object")
    return [(m.get(role_tag), m.get(content_tag)) for m in messages]


@CONVERTERS.register("sharegpt")
def convert_sharegpt(row: dict, spec: DatasetSpec) -> Conversation:
    turns = sharegpt_pairs(require_list(row, spec.column("messages")), spec)
    system, turns = split_system(turns, row, spec)
    return finish_chat(build_turns(turns, spec), system, row, spec, lambda c: candidate_turn(c, spec))


def candidate_turn(value: Any, spec: DatasetSpec) -> Message:
    """A chosen/rejected cell of a sharegpt/openai ranking row: one response-side turn."""
    if not isinstance(value, dict):
        raise RowError("chosen/rejected must each be one turn object")
    role = tag_roles(spec).get(value.get(spec.tags["role_tag"]))
    content = value.get(spec.tags["content_tag"])
    if role not in RESPONSE_ROLES or not isinstance(content, str):
        raise RowError("chosen/rejected must be assistant/function_call turns with text content")
    return Message(role, content)


@CONVERTERS.register("openai")
def convert_openai(row: dict, spec: DatasetSpec) -> Conversation:
    turns = openai_pairs(require_list(row, spec.column("messages")), spec)
    system, turns = split_system(turns, row, spec)
    return finish_chat(build_turns(turns, spec), system, row, spec, lambda c: candidate_turn(c, spec))


def openai_pairs(messages: list, spec: DatasetSpec) -> list[tuple[Any, Any]]:
    """OpenAI chat messages -> (tag, content): tool_calls become a function_call turn and
    consecutive tool results one observation turn (joined by newlines)."""
    tags = spec.tags
    pairs: list[tuple[Any, Any]] = []
    for message, (tag, content) in zip(messages, sharegpt_pairs(messages, spec), strict=True):
        if tag == tags["assistant_tag"] and message.get("tool_calls"):
            tag, content = tags["function_tag"], tool_calls_json(message["tool_calls"])
        if tag == tags["observation_tag"] and pairs and pairs[-1][0] == tag:
            pairs[-1] = (tag, f"{pairs[-1][1]}\n{content}")
            continue
        pairs.append((tag, content))
    return pairs


def tool_calls_json(tool_calls: Any) -> str:
    """OpenAI ``tool_calls`` -> the function_call JSON LLaMA-Factory's datasets hold:
    ``{"name", "arguments"}`` for one call, a list of them for several."""
    if not isinstance(tool_calls, list):
        raise RowError("tool_calls must be a list")
    calls = []
    for call in tool_calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or "name" not in function:
            raise RowError("each tool call needs a function with a name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise RowError(f"arguments of tool call '{function['name']}' are not JSON") from None
        calls.append({"name": function["name"], "arguments": arguments})
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
