"""Agent tuning learns the function-call turns: which tokens of a tool conversation are labels.

On the tiny byte-level tokenizer (every character is its own token, so the learned
text can be read back exactly): the assistant's function call and the token that
ends it are learned, like the final answer; the tool descriptions in the system
turn, the user's question and the tool's observation are not.
"""

import json

import pytest
from train_tiny import save_tiny_model
from transformers import AutoTokenizer

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.encode import EncodeOptions, encode_supervised
from tunery.data.templates import get_template, tools
from tunery.labels import IGNORE_INDEX

TOOLS = json.dumps([
    {"name": "get_weather", "description": "Current weather of a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert money.",
     "parameters": {"type": "object",
                    "properties": {"amount": {"type": "number"}, "to": {"type": "string"}}}},
])
CALLS = json.dumps([
    {"name": "get_weather", "arguments": {"city": "Oslo"}},
    {"name": "convert_currency", "arguments": {"amount": 5, "to": "NOK"}},
])
OPTIONS = EncodeOptions(cutoff_len=4096)
OBSERVATION = '[{"temp": 3}, {"converted": 52.1}]'
CONVERSATION = Conversation(
    messages=[
        Message(Role.USER, "Weather in Oslo, and 5 euros in kroner?"),
        Message(Role.FUNCTION_CALL, CALLS),
        Message(Role.OBSERVATION, OBSERVATION),
        Message(Role.ASSISTANT, "3 degrees; 52.10 NOK."),
    ],
    system="Be brief.",
    tools=TOOLS,
)


@pytest.fixture(autouse=True)
def pinned_date(monkeypatch):
    monkeypatch.setattr(tools, "today", lambda: "26 Jul 2024")


@pytest.fixture(scope="module")
def tiny_tokenizer_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("agent-labels") / "model")


def learned_spans(tokenizer, input_ids: list[int], labels: list[int]) -> list[str]:
    """The texts of the maximal runs of labels (what the model is taught to write), in order."""
    assert len(input_ids) == len(labels)
    spans, run = [], []
    for label in labels:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            spans.append(run)
            run = []
    spans += [run] if run else []
    return [tokenizer.decode(ids) for ids in spans]


def encode(folder, name: str) -> tuple[list[str], str]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = get_template(name, tokenizer)
    input_ids, labels, _ = encode_supervised(CONVERSATION, tokenizer, template, OPTIONS)
    return learned_spans(tokenizer, input_ids, labels), tokenizer.decode(input_ids)


def assert_not_learned(spans: list[str], full_text: str) -> None:
    learned = "".join(spans)
    for unlearned in ("Current weather of a city.", "Weather in Oslo", OBSERVATION, "Be brief."):
        assert unlearned in full_text and unlearned not in learned


def test_qwen_learns_both_parallel_calls_and_the_end_of_turn(tiny_tokenizer_folder):
    spans, full_text = encode(tiny_tokenizer_folder, "qwen")
    assert spans == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 5, "to": "NOK"}}\n</tool_call>'
        "<|im_end|>\n",
        "3 degrees; 52.10 NOK.<|im_end|>\n",
    ]
    assert "<tools>" in full_text and "<tool_response>\n" + OBSERVATION in full_text
    assert_not_learned(spans, full_text)


def test_llama3_learns_the_json_call_list_and_eot(tiny_tokenizer_folder):
    spans, full_text = encode(tiny_tokenizer_folder, "llama3")
    assert spans == [
        '[{"name": "get_weather", "parameters": {"city": "Oslo"}}, '
        '{"name": "convert_currency", "parameters": {"amount": 5, "to": "NOK"}}]<|eot_id|>',
        "3 degrees; 52.10 NOK.<|eot_id|>",
    ]
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n" + OBSERVATION in full_text
    assert_not_learned(spans, full_text)


def test_glm4_learns_the_call_and_the_single_closing_eos(tiny_tokenizer_folder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_folder)
    template = get_template("glm4", tokenizer)
    one_call = Conversation(
        messages=[Message(Role.USER, "Weather in Oslo?"),
                  Message(Role.FUNCTION_CALL, '{"name": "get_weather", "arguments": {"city": "Oslo"}}'),
                  Message(Role.OBSERVATION, '{"temp": 3}'), Message(Role.ASSISTANT, "3 degrees.")],
        tools=TOOLS,
    )
    input_ids, labels, _ = encode_supervised(one_call, tokenizer, template, OPTIONS)
    # efficient_eos: the call turn has no end token of its own; the label of the observation
    # prompt's first token (<|observation|>) is eos, so the model learns to stop after the call
    closing = labels.index(tokenizer.eos_token_id)
    assert tokenizer.convert_ids_to_tokens(input_ids[closing]) == "<|observation|>"
    assert learned_spans(tokenizer, input_ids, labels) == [
        'get_weather\n{"city": "Oslo"}' + tokenizer.eos_token, "\n3 degrees." + tokenizer.eos_token,
    ]
