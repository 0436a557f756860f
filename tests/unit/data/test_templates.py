"""Every built-in template against goldens recorded from the real LLaMA-Factory 0.9.5.

The goldens (tests/unit/data/golden/*.json, written by make_golden.py in a separate
venv) hold, per template, the tokenizer state after LLaMA-Factory's fix, and for fixed
conversations the (prompt ids, response ids) of every turn and the generation prompt.
Comparing the pairs checks text and label mask at once: the split point of each pair is
the mask.
"""

import json
from pathlib import Path

import pytest

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates import TEMPLATES, get_template, tools
from tunery.errors import DataError

GOLDEN = Path(__file__).parent / "golden"
LF_NAMES = sorted(p.stem for p in GOLDEN.glob("*.json") if p.stem not in {"fix_states", "lf_parse_template"})
REQUIRED = [
    "default", "empty", "alpaca", "vicuna", "chatml", "llama2", "llama3", "mistral", "qwen", "qwen3",
    "qwen3_nothink", "chatglm3", "glm4", "baichuan2", "yi", "gemma", "phi4", "deepseek", "zephyr", "smollm2",
]  # fmt: skip


def load_golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def conversation(case: dict) -> Conversation:
    messages = [Message(Role(m["role"]), m["content"]) for m in case["messages"]]
    return Conversation(messages=messages, system=case["system"], tools=case["tools"])


def tokenizer_state(tok) -> dict:
    return {
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "vocab_size": len(tok),
        "special_tokens": sorted(tok.all_special_tokens),
    }


@pytest.fixture(autouse=True)
def pinned_date(monkeypatch):
    monkeypatch.setattr(tools, "today", lambda: "26 Jul 2024")  # the date the goldens were made with


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, clean_up_tokenization_spaces=False)


def check_cases(template, tok, cases: list[dict]) -> None:
    for case in cases:
        conv = conversation(case)
        if "turns_error" in case:
            with pytest.raises(DataError):
                template.encode_turns(tok, conv)
        else:
            turns = template.encode_turns(tok, conv)
            got = [[list(p), list(r)] for p, r in turns]
            assert got == case["turns"], f"{template.name}/{case['name']}: turns differ"
            assert [[decode(tok, p), decode(tok, r)] for p, r in turns] == case["text"]
        prompt_conv = Conversation(messages=conv.messages[:-1], system=conv.system, tools=conv.tools)
        if "prompt_error" in case:
            with pytest.raises(DataError):
                template.encode_prompt(tok, prompt_conv)
        else:
            prompt = template.encode_prompt(tok, prompt_conv)
            assert prompt == case["prompt"], f"{template.name}/{case['name']}: prompt differs"
            assert decode(tok, prompt) == case["prompt_text"]


def test_every_required_template_has_a_golden():
    assert set(REQUIRED) <= set(LF_NAMES)
    assert set(LF_NAMES) <= set(TEMPLATES.names())


def test_tokenizer_starts_where_the_goldens_started(smollm2_tokenizer):
    # the goldens were recorded from this state; if transformers reads the GGUF differently, say so
    assert tokenizer_state(smollm2_tokenizer) == load_golden("smollm2")["start_tokenizer"]


@pytest.mark.parametrize("name", LF_NAMES)
def test_template_matches_llamafactory(name, fresh_tokenizer):
    golden = load_golden(name)
    template = get_template(name, fresh_tokenizer)
    assert template.stop_words == golden["stop_words"]
    assert template.default_system == golden["default_system"]
    assert template.efficient_eos == golden["efficient_eos"]
    assert template.replace_eos == golden["replace_eos"]
    assert tokenizer_state(fresh_tokenizer) == golden["fixed_tokenizer"]
    assert template.get_stop_token_ids(fresh_tokenizer) == golden["stop_token_ids"]
    assert fresh_tokenizer.chat_template == golden["chat_template"]
    check_cases(template, fresh_tokenizer, golden["cases"])


@pytest.mark.parametrize("name", LF_NAMES)
def test_tool_text_and_call_parsing_match_llamafactory(name):
    golden = load_golden(name)
    template = get_template(name)
    tool_case = next(c for c in golden["cases"] if c["name"] == "tools")
    assert template.format_tools(tool_case["tools"]) == golden["tool_text"]
    for item in golden["extract"]:
        expected = item["result"]
        if isinstance(expected, list):
            expected = [{"name": n, "arguments": a} for n, a in expected]
        assert template.extract_tool_calls(item["text"]) == expected, item["text"]


def test_qwen3_without_thinking_matches_llamafactory(fresh_tokenizer):
    template = get_template("qwen3", fresh_tokenizer, enable_thinking=False)
    check_cases(template, fresh_tokenizer, load_golden("qwen3")["no_thinking"])


@pytest.mark.parametrize("name", ["llama3", "chatglm3", "chatml", "gemma", "default", "qwen"])
def test_fix_from_another_starting_state_matches_llamafactory(name, fresh_tokenizer):
    # eos=<|im_start|> and no pad: how another transformers version reads the same GGUF
    fresh_tokenizer.eos_token = "<|im_start|>"
    fresh_tokenizer.pad_token = None
    get_template(name, fresh_tokenizer)
    expected = json.loads((GOLDEN / "fix_states.json").read_text())[name]
    assert tokenizer_state(fresh_tokenizer) == expected


def test_fix_tokenizer_is_idempotent(fresh_tokenizer):
    template = get_template("llama3", fresh_tokenizer)
    state = tokenizer_state(fresh_tokenizer)
    assert template.fix_tokenizer(fresh_tokenizer) == 0
    assert tokenizer_state(fresh_tokenizer) == state


def test_fix_tokenizer_reports_added_tokens(fresh_tokenizer):
    template = get_template("llama3", fresh_tokenizer, fix_tokenizer=False)
    assert template.fix_tokenizer(fresh_tokenizer) == 2  # <|eot_id|> and <|eom_id|> are new to SmolLM2
