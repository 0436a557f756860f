"""The ``auto`` template (the tokenizer's own Jinja chat template) on the SmolLM2 tokenizer."""

import json
from pathlib import Path

import pytest

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates import AutoTemplate, get_template
from tunery.errors import ConfigError, DataError

GOLDEN = Path(__file__).parent / "golden"
SMOLLM_NATIVE_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

SINGLE = [Message(Role.USER, "Hi there"), Message(Role.ASSISTANT, "Hello!")]
MULTI = [
    Message(Role.USER, "What is 2+2?"),
    Message(Role.ASSISTANT, "4"),
    Message(Role.USER, "你好，北京的天气怎么样？"),
    Message(Role.ASSISTANT, "抱歉，我无法获取实时天气。"),
    Message(Role.USER, "Thanks!\nBye."),
    Message(Role.ASSISTANT, " You're welcome."),
]


@pytest.mark.parametrize("messages", [SINGLE, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("system", ["You are terse.", ""], ids=["system", "no_system"])
def test_auto_agrees_with_smollm2_template(messages, system, fresh_tokenizer):
    smollm2 = get_template("smollm2", fresh_tokenizer)
    # smollm2's default ends with a period that the model's own chat template lacks: pass it explicitly
    auto = get_template("auto", fresh_tokenizer, default_system=smollm2.default_system)
    conv = Conversation(messages=list(messages), system=system)
    assert auto.encode_turns(fresh_tokenizer, conv) == smollm2.encode_turns(fresh_tokenizer, conv)
    prompt_conv = Conversation(messages=list(messages[:-1]), system=system)
    assert auto.encode_prompt(fresh_tokenizer, prompt_conv) == smollm2.encode_prompt(
        fresh_tokenizer, prompt_conv
    )


def test_auto_turns_join_to_the_chat_template_render(smollm2_tokenizer):
    auto = get_template("auto", smollm2_tokenizer, fix_tokenizer=False)
    conv = Conversation(messages=list(MULTI))
    text = "".join(smollm2_tokenizer.decode(p + r) for p, r in auto.encode_turns(smollm2_tokenizer, conv))
    hf = [{"role": str(m.role), "content": m.content} for m in MULTI]
    assert text == smollm2_tokenizer.apply_chat_template(hf, tokenize=False)


def test_auto_masks_only_the_assistant_text(smollm2_tokenizer):
    auto = get_template("auto", smollm2_tokenizer, fix_tokenizer=False)
    turns = auto.encode_turns(smollm2_tokenizer, Conversation(messages=list(SINGLE)))
    prompt, response = turns[0]
    assert smollm2_tokenizer.decode(response) == "Hello!<|im_end|>\n"
    assert smollm2_tokenizer.decode(prompt).endswith(
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_auto_reads_the_native_default_system(smollm2_tokenizer):
    auto = get_template("auto", smollm2_tokenizer, fix_tokenizer=False)
    assert isinstance(auto, AutoTemplate)
    assert auto.default_system == SMOLLM_NATIVE_SYSTEM
    assert auto.stop_words == [] and auto.efficient_eos is False


def test_auto_matches_llamafactory_parse_template(fresh_tokenizer):
    # LLaMA-Factory's own template inference (template unset) on the same tokenizer
    golden = json.loads((GOLDEN / "lf_parse_template.json").read_text(encoding="utf-8"))
    auto = get_template("auto", fresh_tokenizer)
    assert auto.default_system == golden["default_system"]
    for case in golden["cases"]:
        messages = [Message(Role(m["role"]), m["content"]) for m in case["messages"]]
        conv = Conversation(messages=messages, system=case["system"])
        assert [[p, r] for p, r in auto.encode_turns(fresh_tokenizer, conv)] == case["turns"], case["name"]


def test_auto_without_chat_template_is_a_clear_error(fresh_tokenizer):
    fresh_tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        get_template("auto", fresh_tokenizer)
    with pytest.raises(ConfigError, match="chat template"):
        get_template("auto", None)


def test_auto_refuses_templates_that_rewrite_history(fresh_tokenizer):
    # the last message is rendered differently from earlier ones: no prefix-stable split exists
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}<last>{% endif %}{% endfor %}"
    )
    auto = get_template("auto", fresh_tokenizer)
    with pytest.raises(ConfigError, match="named template"):
        auto.encode_turns(fresh_tokenizer, Conversation(messages=list(SINGLE)))


def test_auto_reports_a_failing_chat_template(fresh_tokenizer):
    fresh_tokenizer.chat_template = "{{ raise_exception('only user turns') }}"
    auto = get_template("auto", fresh_tokenizer)
    with pytest.raises(DataError, match="only user turns"):
        auto.encode_turns(fresh_tokenizer, Conversation(messages=list(SINGLE)))



def tool_round(tool: dict, question: str, arguments: dict, observation: str, answer: str) -> Conversation:
    """One tool-use exchange: the question, the call of ``tool``, its result, the final answer."""
    call = json.dumps({"name": tool["name"], "arguments": arguments})
    messages = [Message(Role.USER, question), Message(Role.FUNCTION_CALL, call),
                Message(Role.OBSERVATION, observation), Message(Role.ASSISTANT, answer)]
    return Conversation(messages=messages, tools=json.dumps([tool]))


def test_auto_puts_tools_in_the_system_prompt_when_the_template_cannot(smollm2_tokenizer):
    auto = get_template("auto", smollm2_tokenizer, fix_tokenizer=False)
    conv = tool_round({"name": "f", "description": "d", "parameters": {"properties": {}}},
                      "go", {}, "ok", "done")
    (p0, r0), (p1, _) = auto.encode_turns(smollm2_tokenizer, conv)
    first_prompt = smollm2_tokenizer.decode(p0)
    assert SMOLLM_NATIVE_SYSTEM + "You have access to the following tools:\n> Tool Name: f" in first_prompt
    assert smollm2_tokenizer.decode(r0) == "Action: f\nAction Input: {}<|im_end|>\n"
    # no 'tool' role in this chat template: observations are shown as user turns, as LLaMA-Factory does
    assert smollm2_tokenizer.decode(p1) == "<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n"


TOOL_AWARE_JINJA = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' and m.tool_calls is defined %}<|im_start|>assistant\n"
    "{% for tc in m.tool_calls %}<tool_call>{{ tc.function.name }} {{ tc.function.arguments | tojson }}"
    "</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_auto_passes_tools_and_calls_to_a_tool_aware_template(fresh_tokenizer):
    fresh_tokenizer.chat_template = TOOL_AWARE_JINJA
    auto = get_template("auto", fresh_tokenizer)
    assert auto.tool_format == "qwen"  # the template speaks <tool_call>
    conv = tool_round({"name": "get_weather", "parameters": {"properties": {}}},
                      "Weather?", {"city": "Paris"}, "21C", "Warm.")
    (p0, r0), (p1, r1) = auto.encode_turns(fresh_tokenizer, conv)
    assert fresh_tokenizer.decode(p0).startswith('<|im_start|>system\nTools: [{"name": "get_weather"')
    assert fresh_tokenizer.decode(r0) == '<tool_call>get_weather {"city": "Paris"}</tool_call><|im_end|>\n'
    assert fresh_tokenizer.decode(p1) == "<|im_start|>tool\n21C<|im_end|>\n<|im_start|>assistant\n"
    assert fresh_tokenizer.decode(r1) == "Warm.<|im_end|>\n"
