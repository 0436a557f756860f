"""Template behaviour beyond the goldens: tool calls, thinking, errors, copies, Jinja export."""

import json
from pathlib import Path

import pytest

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates import TEMPLATES, TOOL_FORMATS, FunctionCall, get_template
from tunery.data.templates.jinja import build_chat_template
from tunery.errors import ConfigError, DataError

GOLDEN = Path(__file__).parent / "golden"
CALL = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})


def conv(*pairs: tuple[Role, str], system: str = "", tools: str = "") -> Conversation:
    return Conversation(
        messages=[Message(role, content) for role, content in pairs], system=system, tools=tools
    )


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("fmt", ["default", "glm4", "llama3", "mistral", "qwen"])
def test_formatted_calls_parse_back(fmt):
    calls = [FunctionCall("get_weather", '{"city": "北京"}')]
    tool_format = TOOL_FORMATS.get(fmt)
    assert tool_format.extract(tool_format.format_calls(calls)) == calls


@pytest.mark.parametrize("fmt", ["default", "llama3", "mistral", "qwen"])
def test_parallel_calls_parse_back(fmt):
    calls = [FunctionCall("a", '{"x": 1}'), FunctionCall("b", '{"y": [true, null]}')]
    tool_format = TOOL_FORMATS.get(fmt)
    assert tool_format.extract(tool_format.format_calls(calls)) == calls


def test_extract_tool_calls_returns_dicts_or_the_text():
    qwen = get_template("qwen")
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    assert qwen.extract_tool_calls(text) == [{"name": "f", "arguments": '{"a": 1}'}]
    assert qwen.extract_tool_calls("just words") == "just words"


def test_function_call_keeps_a_leading_thought(smollm2_tokenizer):
    qwen3 = get_template("qwen3", fix_tokenizer=False)
    content = "<think>\nI should look it up.\n</think>\n\n" + CALL
    c = conv((Role.USER, "Weather?"), (Role.FUNCTION_CALL, content))
    ((_, response),) = qwen3.encode_turns(smollm2_tokenizer, c)
    assert decode(smollm2_tokenizer, response) == (
        "<think>\nI should look it up.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    )


def test_function_call_already_wrapped_in_tool_call_words(smollm2_tokenizer):
    qwen = get_template("qwen", fix_tokenizer=False)
    c = conv((Role.USER, "Weather?"), (Role.FUNCTION_CALL, f"Let me check.\n<tool_call>{CALL}</tool_call>"))
    ((_, response),) = qwen.encode_turns(smollm2_tokenizer, c)
    assert decode(smollm2_tokenizer, response) == (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    )


@pytest.mark.parametrize("content", ["{not json", '{"arguments": {}}', "[1, 2]"])
def test_bad_function_call_is_a_data_error(content, smollm2_tokenizer):
    template = get_template("qwen", fix_tokenizer=False)
    with pytest.raises(DataError, match="function_call"):
        template.encode_turns(smollm2_tokenizer, conv((Role.USER, "q"), (Role.FUNCTION_CALL, content)))


def test_glm4_refuses_parallel_calls_with_a_data_error(smollm2_tokenizer):
    template = get_template("glm4", fix_tokenizer=False)
    calls = json.dumps([json.loads(CALL), json.loads(CALL)])
    with pytest.raises(DataError, match="parallel"):
        template.encode_turns(smollm2_tokenizer, conv((Role.USER, "q"), (Role.FUNCTION_CALL, calls)))


@pytest.mark.parametrize("tools", ["[{oops", '[{"name": "f"}]'])
def test_bad_tool_list_is_a_data_error(tools, smollm2_tokenizer):
    template = get_template("default", fix_tokenizer=False)
    with pytest.raises(DataError, match=r"[Tt]ool"):
        template.encode_turns(smollm2_tokenizer, conv((Role.USER, "q"), (Role.ASSISTANT, "a"), tools=tools))


def test_empty_tool_list_adds_no_tool_text():
    assert get_template("qwen").format_tools("[]") == ""


@pytest.mark.parametrize(
    ("messages", "method"),
    [
        ([(Role.ASSISTANT, "a"), (Role.USER, "q")], "encode_turns"),
        ([(Role.USER, "q"), (Role.USER, "q2")], "encode_turns"),
        ([(Role.USER, "q")], "encode_turns"),
        ([(Role.USER, "q"), (Role.ASSISTANT, "a")], "encode_prompt"),
        ([], "encode_prompt"),
    ],
)
def test_malformed_conversations_are_data_errors(messages, method, smollm2_tokenizer):
    template = get_template("chatml", fix_tokenizer=False)
    with pytest.raises(DataError):
        getattr(template, method)(smollm2_tokenizer, conv(*messages))


def test_unknown_template_names_the_closest_one():
    with pytest.raises(ConfigError, match="Did you mean 'llama3'"):
        get_template("lama3")


def test_get_template_returns_private_copies():
    custom = get_template("qwen", default_system="Be brief.")
    assert custom.default_system == "Be brief."
    custom.stop_words.append("<x>")
    again = get_template("qwen")
    assert again.default_system == TEMPLATES.get("qwen").default_system != "Be brief."
    assert again.stop_words == ["<|im_end|>"]


def test_default_system_override_is_used_when_the_conversation_has_none(smollm2_tokenizer):
    template = get_template("chatml", default_system="Be brief.", fix_tokenizer=False)
    ((prompt, _),) = template.encode_turns(smollm2_tokenizer, conv((Role.USER, "q"), (Role.ASSISTANT, "a")))
    assert decode(smollm2_tokenizer, prompt).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    ((prompt, _),) = template.encode_turns(
        smollm2_tokenizer, conv((Role.USER, "q"), (Role.ASSISTANT, "a"), system="Own.")
    )
    assert decode(smollm2_tokenizer, prompt).startswith("<|im_start|>system\nOwn.<|im_end|>\n")


def test_efficient_eos_templates_leave_eos_to_the_encoder():
    efficient = {n for n in TEMPLATES.names() if TEMPLATES.get(n).efficient_eos}
    assert {"chatglm3", "glm4", "baichuan2", "gemma2"} <= efficient
    assert not {"default", "llama3", "qwen", "smollm2"} & efficient


def test_qwen3_discarding_history_thoughts_matches_llamafactory(fresh_tokenizer):
    golden = json.loads((GOLDEN / "qwen3.json").read_text(encoding="utf-8"))
    case = next(c for c in golden["cases"] if c["name"] == "thinking")
    c = Conversation(messages=[Message(Role(m["role"]), m["content"]) for m in case["messages"]])
    template = get_template("qwen3", fresh_tokenizer)
    turns = template.encode_turns(fresh_tokenizer, c, discard_history_cot=True)
    assert [[p, r] for p, r in turns] == golden["discard_history_cot"]


def test_qwen3_thinking_defaults(smollm2_tokenizer):
    template = get_template("qwen3", fix_tokenizer=False)
    assert template.reasoning and template.enable_thinking is True and template.preserve_thinking is False
    # a response without a thought gets an empty one, and it is learned (it is in the response)
    ((_, response),) = template.encode_turns(smollm2_tokenizer, conv((Role.USER, "q"), (Role.ASSISTANT, "a")))
    assert decode(smollm2_tokenizer, response) == "<think>\n\n</think>\n\na<|im_end|>\n"


@pytest.mark.parametrize(
    "name", ["default", "alpaca", "vicuna", "chatml", "llama2", "gemma", "mistral", "llama3"]
)
def test_jinja_export_renders_like_the_template(name, fresh_tokenizer):
    template = get_template(name, fresh_tokenizer)
    fresh_tokenizer.chat_template = build_chat_template(template, fresh_tokenizer)
    c = conv(
        (Role.USER, "Hi"), (Role.ASSISTANT, "Yo"), (Role.USER, "Again"), (Role.ASSISTANT, "Sure"), system="S."
    )
    ours = "".join(decode(fresh_tokenizer, p + r) for p, r in template.encode_turns(fresh_tokenizer, c))
    hf = [{"role": "system", "content": "S."}] + [
        {"role": str(m.role), "content": m.content} for m in c.messages
    ]
    assert fresh_tokenizer.apply_chat_template(hf, tokenize=False) == ours


def test_jinja_export_is_skipped_for_named_token_slots(smollm2_tokenizer):
    assert build_chat_template(get_template("chatglm3"), smollm2_tokenizer) is None


def test_templates_pickle_for_dataset_workers():
    import pickle

    template = get_template("qwen3", default_system="x")
    assert pickle.loads(pickle.dumps(template)) == template
