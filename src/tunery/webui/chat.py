"""The chat component: a streaming chat with one model, reusable inside any ``gr.Blocks``.

``build_chat(engine_provider)`` lays out a chat box, a message box with Send /
Stop / Clear, a system prompt, a tools box and generation sliders, and wires
them to ``stream_reply``. `tunery webchat` shows it alone; the full web UI puts
it in its Chat tab with a provider that returns whichever model is loaded.

The Gradio chat history (openai-style ``{"role", "content"}`` dicts) is the
only state: ``history_to_messages`` turns it into Tunery messages on every
turn. Two kinds of assistant entries are shown specially and mapped back:

- a thought (``<think>...</think>``) is folded away by the Chatbot itself
  (``reasoning_tags``), which splits it into its own entry titled "Reasoning";
- tool calls are shown as a titled entry holding the calls as a JSON block,
  and mapped back to a function_call message. The next user message answers
  them, so it is sent as the tool's result (an observation).
"""

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from tunery.config import RunConfig
from tunery.data.conversation import Message, Role
from tunery.errors import TuneryError
from tunery.infer.engine import ChatEngine, TextStream
from tunery.webui import t

THOUGHT_TAGS = [("<think>", "</think>")]
REASONING_TITLE = "Reasoning"  # the title Gradio gives the thoughts it folds away (reasoning_tags)
THOUGHT_OPEN, THOUGHT_CLOSE = "<think>\n", "\n</think>\n\n"  # how templates write a thought back
RESPONSE_ROLES = (Role.ASSISTANT, Role.FUNCTION_CALL)
CALLS_BLOCK = re.compile(r"^```(?:json)?\n(.*)\n```$", re.DOTALL)
SETTING_NAMES = ("max_new_tokens", "temperature", "top_p", "top_k")

EngineProvider = Callable[[], ChatEngine | None]


@dataclass(frozen=True)
class ChatDefaults:
    """What the system prompt and the sliders start at (a config's values, or the library's)."""

    system: str = ""
    max_new_tokens: int = 512
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50

    @classmethod
    def from_config(cls, config: RunConfig, system: str | None = None) -> "ChatDefaults":
        """The config's settings; ``system`` (a loaded template's default) wins over default_system."""
        generation = config.generation
        return cls(
            system=system if system is not None else config.data.default_system or "",
            max_new_tokens=generation.max_new_tokens,
            # the temperature slider alone decides sampling: 0 is greedy, as do_sample=false was
            temperature=generation.temperature if generation.do_sample else 0.0,
            top_p=generation.top_p,
            top_k=generation.top_k,
        )


@dataclass
class ChatComponents:
    """The chat's components and its reply event, for a page that embeds it (and for tests)."""

    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    system: gr.Textbox
    tools: gr.Textbox
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Slider
    settings: gr.Accordion
    reply_event: gr.events.Dependency


# ----- history <-> Tunery messages -----------------------------------------------------------------


def text_of(entry: dict) -> str:
    """The text of one chat entry: a string, or the text parts Gradio sends back from the page."""
    content = entry.get("content")
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict))


def entry_to_message(entry: dict, previous: Message | None) -> Message:
    """One chat entry as a Tunery message (see the module docstring for the special entries)."""
    text, title = text_of(entry), (entry.get("metadata") or {}).get("title")
    if entry["role"] == "user":
        after_call = previous is not None and previous.role == Role.FUNCTION_CALL
        return Message(Role.OBSERVATION if after_call else Role.USER, text)
    if title == REASONING_TITLE:
        return Message(Role.ASSISTANT, f"{THOUGHT_OPEN}{text.strip()}{THOUGHT_CLOSE}")
    calls = CALLS_BLOCK.match(text.strip()) if title else None
    if calls is not None:
        return Message(Role.FUNCTION_CALL, calls.group(1))
    return Message(Role.ASSISTANT, text)


def history_to_messages(history: list[dict]) -> list[Message]:
    """Gradio chat history -> alternating Tunery messages.

    Neighbouring entries of one side are merged: a folded thought and the answer
    after it are one assistant turn, and two user messages in a row (a reply that
    was stopped before it began) are one user turn.
    """
    messages: list[Message] = []
    for entry in history:
        message = entry_to_message(entry, messages[-1] if messages else None)
        if messages and (messages[-1].role in RESPONSE_ROLES) == (message.role in RESPONSE_ROLES):
            messages[-1] = merge_same_side(messages[-1], message)
        else:
            messages.append(message)
    return messages


def merge_same_side(first: Message, second: Message) -> Message:
    if second.role == Role.FUNCTION_CALL:  # a call keeps its JSON clean; an earlier thought is dropped
        return second
    if first.role == Role.FUNCTION_CALL:
        return first
    if first.role == Role.ASSISTANT:
        return Message(Role.ASSISTANT, first.content + second.content)
    return Message(first.role, f"{first.content}\n\n{second.content}")


# ----- tools ---------------------------------------------------------------------------------------


def parse_tools(text: str, lang: str = "en") -> str:
    """The tools box as the JSON text of a tool list ('' when empty); bad JSON is a visible error."""
    if not text or not text.strip():
        return ""
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as err:
        raise gr.Error(t("chat.tools_bad_json", lang, error=str(err))) from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise gr.Error(t("chat.tools_not_list", lang, value=text.strip()[:60]))
    return json.dumps(tools, ensure_ascii=False)


def tool_call_entry(calls: list[dict], lang: str = "en") -> dict:
    """The chat entry that shows tool calls: titled with their names, the calls as a JSON block."""
    shown = [{"name": call["name"], "arguments": parse_arguments(call["arguments"])} for call in calls]
    return {
        "role": "assistant",
        "content": "```json\n" + json.dumps(shown, ensure_ascii=False, indent=2) + "\n```",
        "metadata": {"title": t("chat.tool_call", lang, names=", ".join(call["name"] for call in calls))},
    }


def parse_arguments(arguments: str):
    """A call's arguments as an object when they are JSON (shown indented), else the text as it is."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


# ----- one turn --------------------------------------------------------------------------------------


def generation_settings(max_new_tokens, temperature, top_p, top_k) -> dict:
    """The sliders as engine overrides; temperature 0 means greedy decoding."""
    return {
        "max_new_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "do_sample": float(temperature) > 0,
        "top_p": float(top_p),
        "top_k": int(top_k),
    }


def stream_reply(
    engine: ChatEngine | None,
    message: str,
    history: list[dict],
    system: str = "",
    tools: str = "",
    settings: dict | None = None,
    lang: str = "en",
    on_stream: Callable[[TextStream], None] | None = None,
) -> Iterator[tuple[str, list[dict]]]:
    """Answer ``message``: yields (message box, history) as the reply grows, token by token.

    Closing the generator (Stop, Clear, a closed page) closes the engine's stream,
    which cancels the generation instead of letting it run on; ``on_stream`` is
    handed the stream as soon as it starts, for whoever else may close it.
    """
    if engine is None:
        raise gr.Error(t("chat.no_model", lang))
    if not message.strip():
        yield message, history
        return
    tools_json = parse_tools(tools, lang)
    history = [*history, {"role": "user", "content": message}]
    try:
        stream = engine.stream_chat(history_to_messages(history), system=system or "", tools=tools_json,
                                    **(settings or {}))
    except (TuneryError, ValueError) as err:  # the template or a setting refused this input
        raise gr.Error(str(err)) from None
    if on_stream is not None:
        on_stream(stream)
    text = ""
    try:
        yield "", history
        for piece in stream:
            text += piece
            yield "", [*history, {"role": "assistant", "content": text}]
    finally:
        stream.close()
    calls = engine.template.extract_tool_calls(text) if tools_json else text
    if not isinstance(calls, str):
        yield "", [*history, tool_call_entry(calls, lang)]


# ----- layout ----------------------------------------------------------------------------------------


class ChatHandlers:
    """The chat's event handlers for one page: a reply per turn, Stop and Clear.

    Each browser session's running reply stream is kept, so Stop and Clear close it
    at once: Gradio's own cancel closes a reply's generator only when it next
    yields, which waits for the model's next token.
    """

    def __init__(self, engine_provider: EngineProvider, locale: str = "en"):
        self.engine_provider, self.locale = engine_provider, locale
        self.lock = threading.Lock()
        self.streams: dict[str, TextStream] = {}

    def reply(self, message, history, system, tools, max_new_tokens, temperature, top_p, top_k,
              request: gr.Request):
        yield from self.reply_in(self.locale, message, history, system, tools, max_new_tokens, temperature,
                                 top_p, top_k, request)

    def reply_in(self, lang, message, history, system, tools, max_new_tokens, temperature, top_p, top_k,
                 request: gr.Request):
        """``reply`` with its messages in ``lang`` (a page whose language can change passes its selector)."""
        settings = generation_settings(max_new_tokens, temperature, top_p, top_k)
        session, started = request.session_hash, []

        def track(stream: TextStream) -> None:
            started.append(stream)
            with self.lock:
                self.streams[session] = stream

        try:
            yield from stream_reply(self.engine_provider(), message, history, system, tools, settings,
                                    lang, on_stream=track)
        finally:
            with self.lock:
                if started and self.streams.get(session) is started[0]:
                    del self.streams[session]

    def stop(self, request: gr.Request) -> None:
        with self.lock:
            stream = self.streams.pop(request.session_hash, None)
        if stream is not None:
            stream.close()

    def clear(self, request: gr.Request) -> tuple[list, str]:
        self.stop(request)
        return [], ""


def build_chat(engine_provider: EngineProvider, defaults: ChatDefaults | None = None,
               locale: str = "en", elem_prefix: str = "tunery-chat",
               language: gr.components.Component | None = None) -> ChatComponents:
    """Lay out the chat inside the current ``gr.Blocks`` and wire its events.

    ``engine_provider`` is called on every turn, so a page can load and unload
    models. Components get ``elem_id``s ``{elem_prefix}-message`` and so on.
    ``language``, a page's language selector, makes messages follow it (else they
    stay in ``locale``).
    """
    handlers = ChatHandlers(engine_provider, locale)
    with gr.Row():
        with gr.Column(scale=3):
            chatbot, message, send, stop, clear = build_conversation(locale, elem_prefix)
        with gr.Column(scale=1):
            system, tools, settings, sliders = build_side_panel(defaults or ChatDefaults(), locale,
                                                                elem_prefix)
    turn = [message, chatbot, system, tools, *sliders]
    reply_event = gr.on(
        triggers=[message.submit, send.click], fn=handlers.reply if language is None else handlers.reply_in,
        inputs=turn if language is None else [language, *turn], outputs=[message, chatbot],
        api_name="chat", show_progress="minimal",
    )
    stop.click(handlers.stop, cancels=[reply_event], queue=False, api_name="stop")
    chatbot.clear(handlers.stop, cancels=[reply_event], queue=False, api_visibility="private")  # trash icon
    clear.click(handlers.clear, outputs=[chatbot, message], cancels=[reply_event], queue=False,
                api_name="clear")
    return ChatComponents(chatbot, message, send, stop, clear, system, tools, *sliders, settings, reply_event)


def build_conversation(locale: str, prefix: str):
    chatbot = gr.Chatbot(label=t("chat.chatbot", locale), reasoning_tags=THOUGHT_TAGS, height=480,
                         elem_id=f"{prefix}-history", buttons=["copy", "copy_all"])
    message = gr.Textbox(show_label=False, placeholder=t("chat.message_placeholder", locale), lines=1,
                         max_lines=8, autofocus=True, elem_id=f"{prefix}-message")
    with gr.Row():
        send = gr.Button(t("chat.send", locale), variant="primary", elem_id=f"{prefix}-send")
        stop = gr.Button(t("chat.stop", locale), variant="stop", elem_id=f"{prefix}-stop")
        clear = gr.Button(t("chat.clear", locale), elem_id=f"{prefix}-clear")
    return chatbot, message, send, stop, clear


def build_side_panel(defaults: ChatDefaults, locale: str, prefix: str):
    system = gr.Textbox(label=t("chat.system", locale), value=defaults.system, lines=3,
                        elem_id=f"{prefix}-system")
    tools = gr.Textbox(label=t("chat.tools", locale), info=t("chat.tools_info", locale), lines=4,
                       placeholder='[{"name": "get_weather", "description": "...", "parameters": '
                       '{"type": "object", "properties": {"city": {"type": "string"}}}}]',
                       elem_id=f"{prefix}-tools")
    with gr.Accordion(t("chat.settings", locale), open=True) as settings:
        sliders = [
            gr.Slider(1, max(4096, defaults.max_new_tokens), value=defaults.max_new_tokens, step=1,
                      label=t("chat.max_new_tokens", locale), elem_id=f"{prefix}-max-new-tokens"),
            gr.Slider(0, 2, value=defaults.temperature, step=0.01, label=t("chat.temperature", locale),
                      info=t("chat.temperature_info", locale), elem_id=f"{prefix}-temperature"),
            gr.Slider(0.01, 1, value=defaults.top_p, step=0.01, label=t("chat.top_p", locale),
                      elem_id=f"{prefix}-top-p"),
            gr.Slider(0, 200, value=defaults.top_k, step=1, label=t("chat.top_k", locale),
                      elem_id=f"{prefix}-top-k"),
        ]
    return system, tools, settings, sliders
