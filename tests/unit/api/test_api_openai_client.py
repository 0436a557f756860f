"""The API against the official `openai` client, on a live uvicorn server with the tiny model.

Replies are checked against the engine's own greedy generation, so "correct"
means: the same text the engine writes for that conversation, no matter how
many requests run at once or how the reply is delivered.
"""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from tunery.api.app import create_app
from tunery.data.conversation import Message, Role
from tunery.data.templates.tools import TOOL_FORMATS, FunctionCall

MODEL = "tiny-chat"
KEY = "test-key-123"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def base_url(tiny_engine, live_server):
    with live_server(create_app(tiny_engine, MODEL, api_key=KEY)) as url:
        yield url


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)


def greedy(engine, text: str, **overrides) -> str:
    return engine.chat([Message(Role.USER, text)], **overrides)


@pytest.fixture
def recorded_streams(tiny_engine, monkeypatch):
    """Every TextStream the server starts, to look at how its generation ended."""
    streams, start = [], tiny_engine.stream

    def recording(prompt, **overrides):
        streams.append(start(prompt, **overrides))
        return streams[-1]

    monkeypatch.setattr(tiny_engine, "stream", recording)
    return streams


@pytest.fixture
def slow_model(tiny_engine, monkeypatch):
    """Each forward pass takes 50 ms, so a long reply is still being written when the client leaves."""
    forward = tiny_engine.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_engine.model, "forward", slow_forward)


# ----- endpoints ------------------------------------------------------------------------------------


def test_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_is_the_engines_greedy_reply(client, tiny_engine):
    response = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == greedy(tiny_engine, "hello")
    assert choice.finish_reason == "length"  # the random model never says its stop word
    prompt_tokens = len(tiny_engine.encode_chat([Message(Role.USER, "hello")]))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, 12)
    assert response.usage.total_tokens == prompt_tokens + 12


def test_streamed_chunks_join_to_the_non_streamed_text(client, tiny_engine):
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, stream=True, stream_options={"include_usage": True}
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content == greedy(tiny_engine, "hello")
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_system_message_and_generation_settings_reach_the_engine(client, tiny_engine):
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    response = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=5)
    expected = tiny_engine.chat([Message(Role.USER, "hello")], system="Be brief.", max_new_tokens=5)
    assert response.choices[0].message.content == expected
    assert response.usage.completion_tokens == 5


def test_stop_strings_cut_the_reply_streamed_or_not(client, tiny_engine):
    full = greedy(tiny_engine, "hello")
    stop = full[4:6]  # a piece from the middle of the greedy reply
    expected = full[: full.find(stop)]
    response = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, stop=[stop])
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < 12  # the generation was stopped early
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, stop=stop, stream=True
    ))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_continue_raw_text(client, tiny_engine):
    expected = "".join(tiny_engine.stream(tiny_engine.encode_text("Once upon"), max_new_tokens=6))
    response = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, temperature=0)
    assert response.choices[0].text == expected
    assert response.usage.completion_tokens == 6
    assert response.usage.prompt_tokens == len(tiny_engine.encode_text("Once upon"))
    streamed = client.completions.create(
        model=MODEL, prompt=["Once upon"], max_tokens=6, temperature=0, stream=True, echo=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == "Once upon" + expected


# ----- authentication and errors --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong-key", "test-key-12", "test-key-1234"])
def test_a_wrong_key_is_refused(base_url, key):
    other = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        other.chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}])
def test_a_missing_key_is_refused_but_health_needs_none(base_url, headers):
    response = httpx.get(f"{base_url}/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(base_url.removesuffix("/v1") + "/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("request_fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [*HELLO, {"role": "user", "content": "again"}]}, "messages[1].role"),
        ({"messages": [*HELLO, {"role": "assistant", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 100_000}, "max_tokens"),
        ({"messages": HELLO, "temperature": 2.5}, "temperature"),
        ({"messages": HELLO, "top_p": 0}, "top_p"),
        ({"messages": HELLO, "n": 2}, "n"),
    ],
)
def test_bad_requests_get_openai_shaped_400s(client, request_fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, **request_fields)
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["param"] == param
    assert caught.value.body["message"]


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.body["code"] == "model_not_found"
    assert MODEL in caught.value.body["message"]


def test_a_failing_generation_is_reported_not_hung(client, tiny_engine, monkeypatch):
    def broken_generate(**_):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(tiny_engine.model, "generate", broken_generate)
    with pytest.raises(openai.APIError, match="failed while generating"):
        list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.APIError, match="failed while generating"):
        list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))


# ----- tools ----------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def scripted_model(tiny_engine, monkeypatch):
    """The model 'writes' whatever text the test scripts (through the real engine and template);
    ``prompts`` collects the decoded prompts it was given."""
    script: list[str] = []
    prompts: list[str] = []

    def scripted_generate(**kwargs):
        prompt = kwargs["input_ids"]
        prompts.append(tiny_engine.tokenizer.decode(prompt[0]))
        ids = tiny_engine.tokenizer.encode(script.pop(0), add_special_tokens=False)
        reply = torch.tensor([[*ids, tiny_engine.stop_ids[0]]])
        if "streamer" in kwargs:
            kwargs["streamer"].put(prompt)
            kwargs["streamer"].put(reply[0])
        return torch.cat([prompt, reply], dim=1)

    monkeypatch.setattr(tiny_engine.model, "generate", scripted_generate)
    # tool descriptions are long in bytes; the scripted model has no context limit to respect
    monkeypatch.setattr(tiny_engine.model.config, "max_position_embeddings", 4096)
    return script, prompts


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_come_back_as_tool_calls(client, tiny_engine, scripted_model, stream):
    script, prompts = scripted_model
    tool_format = TOOL_FORMATS.get(tiny_engine.template.tool_format)
    script.append(tool_format.format_calls([FunctionCall("get_weather", '{"city": "Paris"}')]))
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL],
        stream=stream,
    )
    if stream:
        chunks = list(response)
        calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
        finish = chunks[-1].choices[0].finish_reason
    else:
        calls, finish = response.choices[0].message.tool_calls, response.choices[0].finish_reason
        assert response.choices[0].message.content is None
    assert finish == "tool_calls"
    assert [(call.type, call.function.name, call.function.arguments) for call in calls] == [
        ("function", "get_weather", '{"city": "Paris"}')
    ]
    assert calls[0].id.startswith("call_")
    assert "get_weather" in prompts[0] and "Current weather in a city" in prompts[0]


def test_tool_results_continue_the_conversation(client, tiny_engine, scripted_model):
    script, prompts = scripted_model
    script.append("It is sunny in Paris.")
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
    ]
    response = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert response.choices[0].message.content == "It is sunny in Paris."
    assert response.choices[0].finish_reason == "stop"
    expected = tiny_engine.tokenizer.decode(tiny_engine.encode_chat(
        [Message(Role.USER, "Weather in Paris?"),
         Message(Role.FUNCTION_CALL, '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
         Message(Role.OBSERVATION, '{"sky": "sunny"}')],
        tools=json.dumps([WEATHER_TOOL["function"]]),
    ))
    assert prompts[0] == expected


# ----- concurrency and disconnects ------------------------------------------------------------------


def test_twenty_concurrent_requests_each_get_their_own_reply(client, tiny_engine):
    questions = [f"question number {i}" for i in range(20)]
    expected = [greedy(tiny_engine, question, max_new_tokens=8) for question in questions]

    def ask(i: int) -> str:
        messages = [{"role": "user", "content": questions[i]}]
        if i % 2:  # half of them stream
            stream = client.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, max_tokens=8, stream=True
            )
            return "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        response = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8)
        return response.choices[0].message.content

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert answers == expected


def test_a_client_leaving_mid_stream_cancels_its_generation(
    client, tiny_engine, recorded_streams, slow_model, wait_until
):
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=200, stream=True
    )
    for chunk in stream:
        if chunk.choices[0].delta.content:
            break  # the model is writing: leave now
    stream.close()
    wait_until(lambda: not tiny_engine.generation_lock.locked(), "the engine is free again")
    cancelled = recorded_streams[0]
    assert cancelled.cancelled.is_set()
    assert cancelled.completion_tokens < 200
    response = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=4)
    assert response.choices[0].message.content == greedy(tiny_engine, "hello", max_new_tokens=4)


def test_a_client_leaving_while_queued_never_runs(client, tiny_engine, recorded_streams, wait_until):
    with tiny_engine.generation_lock:  # another generation holds the engine
        stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50, stream=True)
        first = next(iter(stream))  # the role chunk is sent before the model starts
        assert first.choices[0].delta.role == "assistant"
        stream.close()
        wait_until(lambda: recorded_streams[0].cancelled.is_set(), "the server noticed the client left")
    response = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=4)
    assert response.choices[0].message.content == greedy(tiny_engine, "hello", max_new_tokens=4)
    assert recorded_streams[0].completion_tokens == 0


def test_a_client_leaving_a_non_streamed_request_cancels_it(
    base_url, tiny_engine, recorded_streams, slow_model, wait_until
):
    host, port = base_url.removeprefix("http://").removesuffix("/v1").split(":")
    body = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 200}}'
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(request.encode())
        wait_until(lambda: recorded_streams and recorded_streams[0].generated, "generation started")
    wait_until(lambda: not tiny_engine.generation_lock.locked(), "the engine is free again")
    assert recorded_streams[0].cancelled.is_set()
    assert recorded_streams[0].completion_tokens < 200


def test_requests_queue_behind_the_engine_lock_instead_of_failing(client, tiny_engine):
    results: list[str] = []

    def ask() -> None:
        response = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0)
        results.append(response.choices[0].message.content)

    with tiny_engine.generation_lock:
        worker = threading.Thread(target=ask)
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not results  # waiting for the engine, not failing
    worker.join(timeout=60)
    assert results == [greedy(tiny_engine, "hello")]
