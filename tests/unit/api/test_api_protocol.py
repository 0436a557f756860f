"""The API's pieces: message mapping and validation, tools, stop strings, settings, auth and error shapes."""

import json

import pytest
from fastapi.testclient import TestClient

from tunery import cli
from tunery.api import server
from tunery.api.app import create_app
from tunery.api.messages import (
    choose_max_new_tokens,
    sampling_overrides,
    stop_strings,
    to_tunery_messages,
    tools_json,
)
from tunery.api.protocol import ApiError, ChatCompletionRequest, ChatMessage, CompletionRequest, ToolSpec
from tunery.api.stops import StopCutter
from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.errors import ConfigError, TuneryError
from tunery.infer.engine import model_label


def chat_messages(*messages: dict) -> list[ChatMessage]:
    return [ChatMessage(**message) for message in messages]


CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}

BAD_CALL = {**CALL, "function": {"name": "f", "arguments": "{not json"}}


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}


def tool(content) -> dict:
    return {"role": "tool", "content": content}


# ----- message mapping --------------------------------------------------------------------------------


def test_roles_map_onto_tunery_messages():
    system, messages = to_tunery_messages(chat_messages(
        {"role": "system", "content": "Be brief."},
        user([{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]),
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "22 C"},
        {"role": "assistant", "content": "Sunny, 22 C."},
        {"role": "user", "content": "Thanks!"},
    ))
    assert system == "Be brief."
    assert messages == [
        Message(Role.USER, "Weather in Paris?"),
        Message(Role.FUNCTION_CALL, '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
        Message(Role.OBSERVATION, "sunny\n22 C"),  # consecutive tool results are one observation turn
        Message(Role.ASSISTANT, "Sunny, 22 C."),
        Message(Role.USER, "Thanks!"),
    ]


def test_parallel_tool_calls_become_a_json_list():
    second = {**CALL, "function": {"name": "get_time", "arguments": "{}"}}
    _, messages = to_tunery_messages(chat_messages(
        {"role": "developer", "content": "x"},
        {"role": "user", "content": "both?"},
        {"role": "assistant", "tool_calls": [CALL, second]},
        {"role": "tool", "content": "sunny"},
    ))
    assert json.loads(messages[1].content) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}
    ]


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        ([], "messages", "empty"),
        ([assistant("hi")], "messages[0].role", "must follow a user"),
        ([user("a"), user("b")], "messages[1].role", "follows a user"),
        ([user("a"), {"role": "system", "content": "b"}], "messages[1].role", "only allowed"),
        ([tool("a")], "messages[0].role", "must follow an assistant message with tool_calls"),
        ([user("a"), assistant("b"), tool("c")], "messages[2].role", "tool_calls"),
        ([user("a"), assistant("b")], "messages", "last message"),
        ([{"role": "function", "content": "a"}], "messages[0].role", "use one of"),
        ([user(None)], "messages[0].content", "no content"),
        ([user([{"type": "image_url"}])], "messages[0].content", "only text parts"),
        ([user("a"), {"role": "assistant", "tool_calls": [BAD_CALL]}, tool("c")], "messages[1].tool_calls",
         "not JSON"),
    ],
)
def test_bad_conversations_are_refused_with_the_message_named(messages, param, words):
    with pytest.raises(ApiError) as caught:
        to_tunery_messages(chat_messages(*messages))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert words in caught.value.message


# ----- tools ------------------------------------------------------------------------------------------


def test_openai_tools_become_the_function_list_templates_describe():
    tools = [ToolSpec(**{"type": "function", "function": {"name": "now", "description": "the time"}}),
             ToolSpec(function={"name": "add", "parameters": {"type": "object", "properties": {"a": {}}}})]
    assert json.loads(tools_json(tools, "auto")) == [
        {"name": "now", "description": "the time", "parameters": {"type": "object", "properties": {}}},
        {"name": "add", "description": "", "parameters": {"type": "object", "properties": {"a": {}}}},
    ]
    assert tools_json(tools, "none") == "" and tools_json(None, None) == ""


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forcing_a_tool_call_is_refused(choice):
    with pytest.raises(ApiError, match="cannot force"):
        tools_json([ToolSpec(function={"name": "add"})], choice)


# ----- stop strings -----------------------------------------------------------------------------------


def feed_all(cutter: StopCutter, pieces: list[str]) -> str:
    shown = "".join(cutter.feed(piece) for piece in pieces)
    return shown if cutter.stopped else shown + cutter.flush()


def test_a_stop_string_split_across_pieces_cuts_the_text():
    cutter = StopCutter(["\nUser:"])
    assert cutter.feed("Hello there") == "Hello there"
    assert cutter.feed("!\nUs") == "!"  # '\nUs' might begin the stop string: held back
    assert cutter.feed("er: more") == ""
    assert cutter.stopped


def test_held_back_text_is_released_when_it_is_not_a_stop_string():
    cutter = StopCutter(["STOP"])
    assert cutter.feed("a ST") == "a "
    assert cutter.feed("ART") == "START"
    assert feed_all(StopCutter(["STOP"]), ["end S", "T"]) == "end ST"  # the reply ended: flushed


def test_the_earliest_of_several_stop_strings_wins():
    assert feed_all(StopCutter(["world", "lo"]), ["hello world"]) == "hel"
    assert feed_all(StopCutter(["xyz", ""]), ["abc"]) == "abc"


def test_stop_accepts_a_string_or_up_to_four():
    assert stop_strings("###") == ["###"]
    assert stop_strings(["a", "", "b"]) == ["a", "b"]
    assert stop_strings(None) == []
    with pytest.raises(ApiError, match="at most 4"):
        stop_strings(["a", "b", "c", "d", "e"])


# ----- generation settings ----------------------------------------------------------------------------


def test_temperature_zero_is_greedy_and_unset_fields_keep_the_config():
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert sampling_overrides(ChatCompletionRequest(**base)) == {}
    assert sampling_overrides(ChatCompletionRequest(**base, temperature=0)) == {"do_sample": False}
    assert sampling_overrides(ChatCompletionRequest(**base, temperature=0.5, top_p=0.9)) == {
        "do_sample": True, "temperature": 0.5, "top_p": 0.9
    }


def test_max_tokens_must_fit_the_context():
    assert choose_max_new_tokens(None, 100, 512, 256) == 156  # the config default, shortened to fit
    assert choose_max_new_tokens(None, 100, 64, 256) == 64
    assert choose_max_new_tokens(20, 100, 512, None) == 20
    with pytest.raises(ApiError, match="at most 156 new tokens"):
        choose_max_new_tokens(157, 100, 512, 256)
    with pytest.raises(ApiError, match="reads at most 256") as caught:
        choose_max_new_tokens(None, 256, 512, 256)
    assert caught.value.code == "context_length_exceeded"


# ----- server options ---------------------------------------------------------------------------------


def test_flags_win_over_environment_variables_which_win_over_defaults():
    config = load_config(None, ["model_name_or_path=smollm2-135m-instruct"])
    assert server.resolve_options(config, environ={}) == server.ServeOptions(
        "127.0.0.1", 8000, None, "smollm2-135m-instruct"
    )
    environ = {"API_HOST": "0.0.0.0", "API_PORT": "9000", "API_KEY": "k", "API_MODEL_NAME": "env-name"}
    from_env = server.resolve_options(config, environ=environ)
    assert from_env == server.ServeOptions("0.0.0.0", 9000, "k", "env-name")
    flags = server.resolve_options(config, "::1", 7000, "flag-key", "flag-name", environ=environ)
    assert flags == server.ServeOptions("::1", 7000, "flag-key", "flag-name")
    with pytest.raises(ConfigError, match="API_PORT must be a port number"):
        server.resolve_options(config, environ={"API_PORT": "eighty"})


@pytest.mark.parametrize(
    ("keys", "name"),
    [
        (["model_name_or_path=models/Qwen2.5-0.5B/"], "Qwen2.5-0.5B"),
        (["model_name_or_path=/tmp/smol.Q8_0.gguf"], "smol.Q8_0"),
        (["model_name_or_path=x", "adapter_name_or_path=outputs/a,outputs/quickstart"], "quickstart"),
    ],
)
def test_the_default_model_name_comes_from_the_model_or_adapter(keys, name):
    assert model_label(load_config(None, keys)) == name


def test_without_the_api_packages_the_cli_says_what_to_install(monkeypatch, capsys):
    real_find_spec = server.importlib.util.find_spec
    monkeypatch.setattr(server.importlib.util, "find_spec",
                        lambda name: None if name == "fastapi" else real_find_spec(name))
    with pytest.raises(TuneryError, match=r"pip install 'tunery\[api\]'"):
        server.require_api_packages()
    assert cli.main(["api", "--model", "smollm2-135m-instruct", "--port", "8123"]) == 2
    assert "pip install 'tunery[api]'" in capsys.readouterr().err


# ----- HTTP: auth and error shapes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tiny_engine):
    with TestClient(create_app(tiny_engine, "tiny", api_key="s3cret")) as client:
        client.headers["Authorization"] = "Bearer s3cret"
        yield client


def test_the_key_is_checked_on_every_v1_route(http):
    assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"
    refused = http.get("/v1/models", headers={"Authorization": "Bearer s3cre"})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json() == {"error": {
        "message": "Missing or incorrect API key; send it as 'Authorization: Bearer <key>'.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key",
    }}
    assert http.post("/v1/completions", headers={"Authorization": ""}, json={}).status_code == 401


def test_errors_have_openai_shape(http):
    json_header = {"Content-Type": "application/json"}
    broken = http.post("/v1/chat/completions", content=b"{not json", headers=json_header)
    assert broken.status_code == 400
    assert broken.json()["error"]["message"] == "The request body is not valid JSON."
    form = http.post("/v1/chat/completions", content=b"model=tiny")
    assert form.status_code == 400 and "Content-Type: application/json" in form.json()["error"]["message"]
    missing = http.post("/v1/chat/completions", json={"model": "tiny"})
    assert missing.status_code == 400
    assert missing.json()["error"] == {
        "message": "'messages' is required.", "type": "invalid_request_error", "param": "messages",
        "code": None,
    }
    unknown = http.get("/v1/nothing-here")
    assert unknown.status_code == 404 and "/v1/nothing-here" in unknown.json()["error"]["message"]
    assert http.get("/v1/models/other").json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": "x", "logprobs": 2}, "logprobs"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_completions_refuse_what_they_cannot_do(http, fields, param):
    response = http.post("/v1/completions", json={"model": "tiny", **fields})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_completion_request_model_accepts_what_clients_send():
    request = CompletionRequest(model="m", prompt="hi", user="someone", seed=3, presence_penalty=0.1)
    assert request.prompt == "hi" and request.max_tokens is None  # unused fields are ignored
