"""The five tool formats and the ``tool_format`` override, against LLaMA-Factory 0.9.5.

``golden_tools/tool_formats.json`` (written by make_tool_golden.py with the real
library) holds, per format, the tool description of a richer tool list, the
rendering of one, two and three calls, and what the extractor makes of generated
texts (good, parallel, malformed). It also holds whole tool conversations encoded by
templates whose format was overridden, as ``get_template_and_fix_tokenizer`` does
with ``tool_format`` set.
"""

import json
from pathlib import Path

import pytest

from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates import TOOL_FORMATS, FunctionCall, get_template, tools
from tunery.errors import ConfigError, DataError

GOLDEN_FILE = Path(__file__).parent / "golden_tools" / "tool_formats.json"
GOLDEN = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))
FORMATS = ["default", "qwen", "llama3", "glm4", "mistral"]
OVERRIDES = [(o["template"], o["tool_format"]) for o in GOLDEN["overrides"]]


@pytest.fixture(autouse=True)
def pinned_date(monkeypatch):
    monkeypatch.setattr(tools, "today", lambda: "26 Jul 2024")  # the date the goldens were made with


def as_calls(recorded: list) -> list[FunctionCall]:
    return [FunctionCall(name, arguments) for name, arguments in recorded]


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, clean_up_tokenization_spaces=False)


def test_every_format_of_the_issue_is_registered_and_recorded():
    assert set(FORMATS) <= set(TOOL_FORMATS.names())
    assert set(GOLDEN["formats"]) == set(FORMATS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_description_matches_llamafactory(fmt):
    assert TOOL_FORMATS.get(fmt).describe(GOLDEN["tools"]) == GOLDEN["formats"][fmt]["describe"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("key", ["one", "two", "three"])
def test_single_and_parallel_calls_render_like_llamafactory(fmt, key):
    calls = [FunctionCall(name, json.dumps(args, ensure_ascii=False)) for name, args in GOLDEN["calls"][key]]
    expected = GOLDEN["formats"][fmt]["calls"][key]
    if isinstance(expected, dict):  # GLM-4 has no parallel calls
        with pytest.raises(ValueError, match="parallel"):
            TOOL_FORMATS.get(fmt).format_calls(calls)
    else:
        assert TOOL_FORMATS.get(fmt).format_calls(calls) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_extraction_matches_llamafactory_including_malformed_text(fmt):
    tool_format = TOOL_FORMATS.get(fmt)
    for item in GOLDEN["formats"][fmt]["extract"]:
        expected = item["result"]
        expected = expected if isinstance(expected, str) else as_calls(expected)
        assert tool_format.extract(item["text"]) == expected, (fmt, item["text"])


@pytest.mark.parametrize("fmt", ["qwen", "llama3", "mistral", "default"])
def test_several_calls_extract_as_a_list_of_name_and_json_arguments(fmt):
    template = get_template("smollm2", tool_format=fmt)
    calls = [FunctionCall("get_weather", '{"city": "Oslo"}'),
             FunctionCall("convert_currency", '{"amount": 3}')]
    generated = TOOL_FORMATS.get(fmt).format_calls(calls)
    assert template.extract_tool_calls(generated) == [
        {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"name": "convert_currency", "arguments": '{"amount": 3}'},
    ]
    broken = generated.replace('"Oslo"}', '"Oslo"')  # a model that stopped mid-call
    assert template.extract_tool_calls(broken) == broken


@pytest.mark.parametrize(("name", "fmt"), OVERRIDES)
def test_overridden_tool_format_encodes_like_llamafactory(name, fmt, fresh_tokenizer):
    golden = next(o for o in GOLDEN["overrides"] if (o["template"], o["tool_format"]) == (name, fmt))
    template = get_template(name, fresh_tokenizer, tool_format=fmt)
    assert template.tool_format == fmt
    tools_case = next(c for c in golden["cases"] if c["name"] == "tools")
    assert template.format_tools(tools_case["tools"]) == golden["tool_text"]
    for case in golden["cases"]:
        messages = [Message(Role(m["role"]), m["content"]) for m in case["messages"]]
        conv = Conversation(messages=messages, system=case["system"], tools=case["tools"])
        if "turns_error" in case:
            with pytest.raises(DataError):
                template.encode_turns(fresh_tokenizer, conv)
        else:
            turns = template.encode_turns(fresh_tokenizer, conv)
            assert [[list(p), list(r)] for p, r in turns] == case["turns"], (name, fmt, case["name"])
        prompt = Conversation(messages=messages[:-1], system=case["system"], tools=case["tools"])
        assert template.encode_prompt(fresh_tokenizer, prompt) == case["prompt"], (name, fmt, case["name"])


def test_templates_use_their_family_format_by_default():
    expected = {"default": "default", "smollm2": "default", "qwen": "qwen", "qwen3": "qwen",
                "llama3": "llama3", "llama4": "llama3", "glm4": "glm4", "chatglm3": "glm4",
                "mistral": "mistral", "mistral_small": "mistral"}
    assert {name: get_template(name).tool_format for name in expected} == expected


def test_override_leaves_the_registered_template_alone():
    get_template("qwen", tool_format="llama3")
    assert get_template("qwen").tool_format == "qwen"


def test_auto_template_takes_the_override_and_keeps_its_call_slots(fresh_tokenizer):
    own = get_template("auto", fresh_tokenizer)
    auto = get_template("auto", fresh_tokenizer, tool_format="llama3")
    assert (own.tool_format, auto.tool_format) == ("default", "llama3")
    assert auto.format_function.slots == own.format_function.slots  # the Jinja template writes the turn
    assert auto.format_function.tool_format == "llama3"
    assert "Cutting Knowledge Date" in auto.format_tools(GOLDEN["overrides"][0]["cases"][0]["tools"])


def test_unknown_tool_format_is_a_config_error_listing_the_formats():
    with pytest.raises(ConfigError, match="tool_format") as err:
        get_template("qwen", tool_format="hermes")
    assert all(fmt in str(err.value) for fmt in FORMATS)


def test_config_tool_format_reaches_the_template_training_and_chat_share(tmp_path):
    from train_tiny import save_tiny_model

    from tunery.train.run import load_tokenizer_and_template

    folder = save_tiny_model(tmp_path / "model")
    config = load_config(None, [f"model_name_or_path={folder}", "template=chatml", "tool_format=llama3"])
    _, template = load_tokenizer_and_template(config)  # what training, ChatEngine and the API call
    assert template.tool_format == "llama3"
    assert template.extract_tool_calls('{"name": "f", "parameters": {"x": 1}}') == [
        {"name": "f", "arguments": '{"x": 1}'}
    ]
    bad = load_config(None, [f"model_name_or_path={folder}", "template=chatml", "tool_format=glm"])
    with pytest.raises(ConfigError, match="Did you mean 'glm4'"):
        load_tokenizer_and_template(bad)
