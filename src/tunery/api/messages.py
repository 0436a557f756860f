"""OpenAI requests -> Tunery's conversation shape and generation settings, validated.

Roles map as LLaMA-Factory's API maps them: ``system`` (or ``developer``) becomes
the system prompt; ``user`` a user turn; an ``assistant`` message with content an
assistant turn, one with ``tool_calls`` a function_call turn (JSON of the calls,
exactly as an OpenAI-format dataset row is converted, so the model sees what it
was trained on); ``tool`` an observation turn, consecutive tool results joined
into one. Tunery's templates need user/tool and assistant turns to alternate;
requests that break that get a 400 naming the message.
"""

import json

from tunery.api.protocol import ApiError, ChatMessage, SamplingRequest, ToolSpec
from tunery.data.conversation import Message, Role
from tunery.data.converters import RowError, tool_calls_json

SYSTEM_ROLES = ("system", "developer")
KNOWN_ROLES = (*SYSTEM_ROLES, "user", "assistant", "tool")
MAX_STOP_STRINGS = 4  # OpenAI's limit


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ----- messages -------------------------------------------------------------------------------------


def to_tunery_messages(messages: list[ChatMessage]) -> tuple[str, list[Message]]:
    """The system prompt and the alternating Tunery messages of an OpenAI message list."""
    if not messages:
        raise bad_request("'messages' is empty; send at least one user message.", param="messages")
    check_order(messages)
    system = ""
    converted: list[Message] = []
    for index, message in enumerate(messages):
        if message.role in SYSTEM_ROLES:
            system = text_of(message, index)
        elif message.role == "tool" and converted and converted[-1].role == Role.OBSERVATION:
            merged = f"{converted[-1].content}\n{text_of(message, index)}"
            converted[-1] = Message(Role.OBSERVATION, merged)
        else:
            converted.append(to_message(message, index))
    return system, converted


def check_order(messages: list[ChatMessage]) -> None:
    """Optional system first; then user (or tool results) and assistant alternate, ending on user/tool."""
    previous: ChatMessage | None = None
    for index, message in enumerate(messages):
        role, where = message.role, f"messages[{index}]"
        if role not in KNOWN_ROLES:
            raise bad_request(
                f"{where} has role '{role}'; use one of {', '.join(KNOWN_ROLES)}.", param=f"{where}.role"
            )
        if problem := order_problem(role, previous, index):
            raise bad_request(
                f"{where} ({role}) {problem}. After an optional system message, user (or tool) and "
                "assistant messages must alternate.",
                param=f"{where}.role",
            )
        previous = message
    if messages[-1].role not in ("user", "tool"):
        raise bad_request(
            f"The last message is from '{messages[-1].role}'; it must be a user or tool message "
            "(the reply continues the conversation from there).",
            param="messages",
        )


def order_problem(role: str, previous: ChatMessage | None, index: int) -> str | None:
    """Why ``role`` cannot follow ``previous`` (None when it can)."""
    before = previous.role if previous is not None else None
    if role in SYSTEM_ROLES:
        return None if index == 0 else "is not first; a system message is only allowed at the start"
    if role == "user" and before in ("user", "tool"):
        return f"follows a {before} message"
    if role == "assistant" and before not in ("user", "tool"):
        return "must follow a user or tool message"
    if role == "tool" and before != "tool" and not (before == "assistant" and previous.tool_calls):
        return "must follow an assistant message with tool_calls (or another tool message)"
    return None


def to_message(message: ChatMessage, index: int) -> Message:
    """One user, assistant or tool message as a Tunery message."""
    if message.role == "assistant" and message.tool_calls:
        return Message(Role.FUNCTION_CALL, calls_json(message, index))
    if message.role == "assistant":
        return Message(Role.ASSISTANT, text_of(message, index, required=False))
    role = Role.USER if message.role == "user" else Role.OBSERVATION
    return Message(role, text_of(message, index))


def calls_json(message: ChatMessage, index: int) -> str:
    """An assistant's tool calls as the function_call JSON Tunery's templates render."""
    try:
        return tool_calls_json([call.model_dump() for call in message.tool_calls])
    except RowError as err:
        where = f"messages[{index}].tool_calls"
        raise bad_request(f"{where}: {err}.", param=where) from None


def text_of(message: ChatMessage, index: int, required: bool = True) -> str:
    """A message's text; content parts other than text are refused (Tunery serves text models)."""
    content = message.content
    if content is None:
        if required:
            where = f"messages[{index}]"
            raise bad_request(f"{where} ({message.role}) has no content.", param=f"{where}.content")
        return ""
    if isinstance(content, str):
        return content
    for part in content:
        if part.type != "text" or part.text is None:
            raise bad_request(
                f"messages[{index}] has a '{part.type}' content part; only text parts are supported.",
                param=f"messages[{index}].content",
            )
    return "".join(part.text for part in content)


# ----- tools ----------------------------------------------------------------------------------------


def tools_json(tools: list[ToolSpec] | None, tool_choice: str | dict | None) -> str:
    """The request's tools as the JSON list of function definitions templates describe ('' for none)."""
    if tool_choice not in (None, "auto", "none"):
        raise bad_request(
            f"tool_choice {json.dumps(tool_choice)} is not supported: Tunery cannot force a tool call. "
            "Use 'auto' or 'none'.",
            param="tool_choice",
        )
    if not tools or tool_choice == "none":
        return ""
    functions = []
    for tool in tools:
        function = tool.function.model_dump()
        # a tool without arguments may omit them; every tool format lists the properties
        function["parameters"] = {"type": "object", "properties": {}, **function["parameters"]}
        functions.append(function)
    return json.dumps(functions, ensure_ascii=False)


# ----- sampling -------------------------------------------------------------------------------------


def check_sampling(request: SamplingRequest) -> None:
    """Refuse what the engine cannot do, rather than silently doing something else."""
    if request.n != 1:
        raise bad_request(f"n is {request.n}; Tunery returns one choice per request (n must be 1).", "n")
    logprobs = getattr(request, "logprobs", None)
    if logprobs is not None and logprobs is not False:  # 0 asks for the chosen tokens' logprobs
        raise bad_request("logprobs are not supported by Tunery's API.", param="logprobs")


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """The request's stop strings as a list (empty strings dropped)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"stop has {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed.", "stop")
    return [text for text in stops if text]


def sampling_overrides(request: SamplingRequest) -> dict:
    """Per-request generation settings; anything unset keeps the server config's value.

    ``temperature: 0`` means greedy decoding; a positive temperature turns sampling on.
    """
    overrides: dict = {}
    if request.temperature is not None:
        overrides["do_sample"] = request.temperature > 0
        if request.temperature > 0:
            overrides["temperature"] = request.temperature
    if request.top_p is not None:
        overrides["top_p"] = request.top_p
    return overrides


def choose_max_new_tokens(
    requested: int | None, prompt_tokens: int, default: int, context_length: int | None
) -> int:
    """How many tokens to generate: the request's ``max_tokens`` or the config default, within the context."""
    if context_length is None:
        return requested or default
    room = context_length - prompt_tokens
    if room < 1:
        raise bad_request(
            f"The prompt has {prompt_tokens} tokens; this model reads at most {context_length}. "
            "Shorten the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is None:
        return min(default, room)
    if requested > room:
        raise bad_request(
            f"max_tokens is too large: {requested}. The prompt has {prompt_tokens} tokens and this model "
            f"reads at most {context_length}, so at most {room} new tokens fit.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested
