"""`tunery webchat` on the tiny model: the chat handlers called directly, then the page served in-process.

The handlers are plain generators, so streaming, history mapping, tool errors and
cancellation are tested without a server; the served page is then driven with
the official ``gradio_client`` the way a browser's requests would drive it.
"""

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import gradio as gr
import pytest
from gradio_client import Client
from live import free_port, save_letters_model

from tunery.cli import main
from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.errors import ConfigError
from tunery.infer.engine import ChatEngine
from tunery.webui import t
from tunery.webui.chat import (
    ChatDefaults,
    generation_settings,
    history_to_messages,
    parse_tools,
    stream_reply,
    tool_call_entry,
)
from tunery.webui.webchat import create_webchat

GREEDY = generation_settings(max_new_tokens=12, temperature=0, top_p=0.7, top_k=50)
WEATHER_TOOL = '[{"name": "get_weather", "description": "Weather of a city", "parameters": ' \
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]'


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = save_letters_model(tmp_path_factory.mktemp("webchat-tiny") / "model")
    return load_config(None, [f"model_name_or_path={folder}", "template=chatml", "do_train=false",
                              "do_sample=false", "max_new_tokens=12", "default_system=Be brief."])


@pytest.fixture(scope="module")
def engine(config) -> ChatEngine:
    return ChatEngine(config)


def last_reply(history: list[dict]) -> str:
    assert history[-1]["role"] == "assistant"
    content = history[-1]["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


# ----- history mapping -----


def test_history_maps_to_alternating_tunery_messages():
    parts = [{"type": "text", "text": "how are "}, {"type": "text", "text": "you"}]  # as the page sends it
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": parts}]
    assert history_to_messages(history) == [
        Message(Role.USER, "hi"), Message(Role.ASSISTANT, "hello"), Message(Role.USER, "how are you")]


def test_a_folded_thought_rejoins_its_answer():
    history = [{"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "add them",
                "metadata": {"title": "Reasoning", "status": "done"}},
               {"role": "assistant", "content": "4", "metadata": None}]
    assert history_to_messages(history)[1] == Message(Role.ASSISTANT, "<think>\nadd them\n</think>\n\n4")


def test_a_tool_call_entry_maps_back_and_the_next_message_is_its_result():
    call = tool_call_entry([{"name": "get_weather", "arguments": '{"city": "Paris"}'}])
    assert call["metadata"]["title"] == "Tool call: get_weather"
    history = [{"role": "user", "content": "weather in Paris?"}, call, {"role": "user", "content": "sunny"}]
    messages = history_to_messages(history)
    assert [m.role for m in messages] == [Role.USER, Role.FUNCTION_CALL, Role.OBSERVATION]
    assert messages[1].content == '[\n  {\n    "name": "get_weather",\n    "arguments": {\n      ' \
        '"city": "Paris"\n    }\n  }\n]'


def test_a_stopped_turn_leaves_the_history_alternating():
    history = [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]
    assert history_to_messages(history) == [Message(Role.USER, "first\n\nsecond")]


# ----- one turn, streamed -----


def test_the_reply_streams_growing_text_that_ends_as_the_greedy_reply(engine):
    steps = list(stream_reply(engine, "hello", [], "Be brief.", "", GREEDY))
    assert steps[0] == ("", [{"role": "user", "content": "hello"}])  # the box clears, the message shows
    texts = [last_reply(history) for _, history in steps[1:]]
    assert len(texts) > 1
    assert all(longer.startswith(shorter) and longer != shorter for shorter, longer in pairwise(texts))
    expected = engine.chat([Message(Role.USER, "hello")], system="Be brief.", **GREEDY)
    assert texts[-1] == expected


def test_a_second_turn_sends_the_whole_conversation(engine):
    *_, (_, first) = stream_reply(engine, "hello", [], "", "", GREEDY)
    *_, (_, second) = stream_reply(engine, "and then?", first, "", "", GREEDY)
    conversation = [Message(Role.USER, "hello"), Message(Role.ASSISTANT, last_reply(first)),
                    Message(Role.USER, "and then?")]
    assert last_reply(second) == engine.chat(conversation, **GREEDY)
    assert len(second) == 4


class StreamSpy:
    """Wraps the engine so a test can see the stream each turn opened."""

    def __init__(self, engine: ChatEngine):
        self.engine, self.template, self.streams = engine, engine.template, []

    def stream_chat(self, *args, **kwargs):
        self.streams.append(self.engine.stream_chat(*args, **kwargs))
        return self.streams[-1]


def test_closing_the_handler_cancels_the_generation(engine):
    long = generation_settings(200, 0, 0.7, 50)
    assert engine.reply([Message(Role.USER, "hello")], **long).completion_tokens == 200  # left alone
    spy = StreamSpy(engine)
    turn = stream_reply(spy, "hello", [], "", "", long)
    next(turn)
    next(turn)  # the first piece arrived: generation is running
    with held_until_cancelled(engine, spy.streams[0]):
        turn.close()  # what Gradio does on Stop, on Clear and when the page goes away
        assert spy.streams[0].cancelled.is_set()
        wait_until_released(engine)
    assert spy.streams[0].completion_tokens < 200
    assert spy.streams[0].failure is None


def test_stop_before_the_first_piece_also_cancels(engine):
    spy = StreamSpy(engine)
    turn = stream_reply(spy, "hello", [], "", "", GREEDY)
    next(turn)
    turn.close()
    assert spy.streams[0].cancelled.is_set()


@contextmanager
def held_until_cancelled(engine: ChatEngine, stream):
    """Each further model step waits until ``stream`` is cancelled, so the reply cannot finish first."""
    def wait_for_cancel(*_) -> None:  # returns None: the step's inputs stay as they are
        stream.cancelled.wait(timeout=60)

    hook = engine.model.register_forward_pre_hook(wait_for_cancel)
    try:
        yield
    finally:
        hook.remove()


def wait_until_released(engine: ChatEngine) -> None:
    """Wait until the generation has ended and let go of the model."""
    assert engine.generation_lock.acquire(timeout=60)
    engine.generation_lock.release()


class ToolCallingEngine:
    """An engine whose model answers with a tool call in the template's own format."""

    def __init__(self, engine: ChatEngine, text: str):
        self.template, self.text, self.seen = engine.template, text, {}

    def stream_chat(self, messages, system="", tools="", **settings) -> Iterator[str]:
        self.seen = {"messages": messages, "tools": tools}
        return ToolCallStream(self.text)


class ToolCallStream:
    def __init__(self, text: str):
        self.pieces = [text[:7], text[7:]]
        self.closed = False

    def __iter__(self):
        return iter(self.pieces)

    def close(self):
        self.closed = True


def test_tool_calls_in_the_reply_are_shown_formatted(engine):
    fake = ToolCallingEngine(engine, 'Action: get_weather\nAction Input: {"city": "Paris"}')
    *_, (_, history) = stream_reply(fake, "weather in Paris?", [], "", WEATHER_TOOL, GREEDY)
    assert history[-1]["metadata"]["title"] == "Tool call: get_weather"
    assert '"city": "Paris"' in history[-1]["content"]
    assert fake.seen["tools"].startswith('[{"name": "get_weather"')
    *_, (_, history) = stream_reply(fake, "sunny", history, "", WEATHER_TOOL, GREEDY)
    assert [m.role for m in fake.seen["messages"]] == [Role.USER, Role.FUNCTION_CALL, Role.OBSERVATION]


def test_without_tools_a_tool_like_reply_stays_text(engine):
    fake = ToolCallingEngine(engine, 'Action: get_weather\nAction Input: {"city": "Paris"}')
    *_, (_, history) = stream_reply(fake, "weather?", [], "", "", GREEDY)
    assert history[-1] == {"role": "assistant", "content": fake.text}


# ----- bad input is a visible message, not a crash -----


def test_bad_tools_json_is_a_visible_error_and_nothing_is_sent(engine):
    spy = StreamSpy(engine)
    with pytest.raises(gr.Error, match="The tools box is not valid JSON"):
        next(stream_reply(spy, "hello", [], "", '[{"name": "f",}]', GREEDY))
    assert spy.streams == []


def test_tools_must_be_a_list_of_definitions():
    with pytest.raises(gr.Error, match=r'function definitions .*, not "get_weather"'):
        parse_tools('"get_weather"')
    assert parse_tools('{"name": "f", "parameters": {}}') == '[{"name": "f", "parameters": {}}]'
    assert parse_tools("  ") == ""


def test_a_tool_without_parameters_is_refused_by_the_template_as_an_error(engine):
    with pytest.raises(gr.Error, match="Tool description is missing"):
        next(stream_reply(engine, "hello", [], "", '[{"description": "no name"}]', GREEDY))


def test_a_setting_out_of_range_is_a_visible_error(engine):
    with pytest.raises(gr.Error, match="top_p"):
        next(stream_reply(engine, "hello", [], "", "", generation_settings(12, 0.7, 0, 50)))


def test_no_model_loaded_is_a_visible_error():
    with pytest.raises(gr.Error, match="No model is loaded"):
        next(stream_reply(None, "hello", [], "", "", GREEDY))


def test_an_empty_message_is_not_sent(engine):
    assert list(stream_reply(engine, "   ", [], "", "", GREEDY)) == [("   ", [])]


# ----- defaults and strings -----


def test_defaults_come_from_the_config(config):
    defaults = ChatDefaults.from_config(config)
    assert defaults.system == "Be brief."
    assert defaults.max_new_tokens == 12
    assert defaults.temperature == 0  # do_sample: false is greedy, which the slider shows as 0


def test_strings_exist_in_both_languages():
    assert t("chat.clear", "zh") == "清空历史"
    assert t("chat.tool_call", "en", names="a, b") == "Tool call: a, b"
    with pytest.raises(ConfigError, match="Unknown UI language 'fr'"):
        t("chat.clear", "fr")


# ----- the page, served -----


def wait_until(condition, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` (a hang guard: the tests assert on state, not on time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def spy(engine) -> StreamSpy:
    return StreamSpy(engine)


@pytest.fixture(scope="module")
def served(config, spy):
    page = create_webchat(config, spy)
    _, url, _ = page.queue().launch(server_name="127.0.0.1", server_port=free_port(),
                                    prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False)
    page.close()


def test_the_served_page_streams_the_greedy_reply(served, engine):
    job = served.submit("hello", [], "Be brief.", "", 12, 0, 0.7, 50, api_name="/chat")
    message_box, history = job.result()
    assert message_box == ""
    expected = engine.chat([Message(Role.USER, "hello")], system="Be brief.", **GREEDY)
    assert last_reply(history) == expected
    updates = [last_reply(h) for _, h in job.outputs() if h and h[-1]["role"] == "assistant"]
    assert len(updates) > 1  # the reply arrived in pieces


def test_stop_on_the_served_page_cancels_the_generation(served, spy, engine):
    job = served.submit("hello", [], "", "", 200, 0, 0.7, 50, api_name="/chat")
    wait_until(lambda: len(job.outputs()) >= 2, "the reply started")
    with held_until_cancelled(engine, spy.streams[-1]):
        served.predict(api_name="/stop")  # what the Stop button runs (besides cancelling the event)
        _, history = job.result()  # the reply ends at once, with what was written so far
        wait_until_released(engine)
    assert spy.streams[-1].cancelled.is_set() and spy.streams[-1].failure is None
    assert spy.streams[-1].completion_tokens < 200  # left alone it writes all 200 (tested above)
    assert last_reply(history) == spy.streams[-1].text


def test_the_served_page_reports_bad_tools_json(served):
    with pytest.raises(Exception, match="The tools box is not valid JSON"):
        served.predict("hello", [], "", "{not json", 12, 0, 0.7, 50, api_name="/chat")


def test_the_served_page_clears_the_history(served):
    assert served.predict(api_name="/clear") == ([], "")


# ----- the command -----


def test_webchat_without_gradio_says_how_to_install(monkeypatch, capsys, config):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real_find_spec(name, *a))
    assert main(["webchat", f"model_name_or_path={config.model.model_name_or_path}", "template=chatml"]) == 2
    assert "pip install 'tunery[webui]'" in capsys.readouterr().err


def test_webchat_refuses_a_bad_port_before_loading(capsys, config):
    assert main(["webchat", f"model_name_or_path={config.model.model_name_or_path}", "--port", "70000"]) == 2
    assert "between 1 and 65535" in capsys.readouterr().err


def test_webchat_on_a_port_in_use_says_so(capsys, config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["webchat", f"model_name_or_path={config.model.model_name_or_path}", "template=chatml",
                     "--port", str(port)])
    assert code == 2
    assert f"Cannot serve the chat on 127.0.0.1:{port}" in capsys.readouterr().err
