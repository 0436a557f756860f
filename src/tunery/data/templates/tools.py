"""Tool (function-call) formats: describe tools, render calls, parse calls back.

Each format is the text convention one model family was trained on, matching
LLaMA-Factory 0.9.5's ``tool_utils`` byte for byte: ``describe`` turns the
dataset's tool list into the text appended to the system prompt,
``format_calls`` renders an assistant's tool request, and ``extract`` is its
inverse on generated text (a list of calls, or the text unchanged when it holds
no call).
"""

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from tunery.registry import Registry


class FunctionCall(NamedTuple):
    name: str
    arguments: str  # JSON text, as the OpenAI API carries it


DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    """(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n"""
    "```\n"
)

GLM4_TOOL_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)

GLM4_CALL_HINT = "在调用上述函数时，请使用 Json 格式表示调用的参数。"

LLAMA3_TOOL_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. "
    "To call a function, please respond with JSON for a function call. "
    """Respond in the format {{"name": function name, "parameters": """
    """dictionary of argument name and its value}}. """
    "Do not use variables.\n\n{tool_text}"
)

QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    """<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, """
    """"arguments": <args-json-object>}}\n</tool_call>"""
)


def today() -> str:
    """The date Llama 3's tool prompt shows (a function so tests can pin it)."""
    return datetime.now().strftime("%d %b %Y")


def _unwrap(tool: dict) -> dict:
    """OpenAI-style ``{"type": "function", "function": {...}}`` -> the inner function spec."""
    return tool.get("function", "") if tool.get("type") == "function" else tool


def _wrap(tool: dict) -> dict:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class ToolFormat(ABC):
    """Base: subclasses implement the three conversions for one family."""

    @abstractmethod
    def describe(self, tools: list[dict]) -> str:
        """The tool list as the system-prompt text this family expects."""

    @abstractmethod
    def format_calls(self, calls: list[FunctionCall]) -> str:
        """Function calls as the assistant writes them in this family."""

    @abstractmethod
    def extract(self, text: str) -> str | list[FunctionCall]:
        """Function calls parsed out of generated text, or the text itself when it holds none."""


TOOL_FORMATS: Registry[ToolFormat] = Registry("tool format")


@dataclass(frozen=True)
class DefaultTools(ToolFormat):
    """ReAct-style ``Action: name / Action Input: {json}`` (LLaMA-Factory's default)."""

    def describe(self, tools: list[dict]) -> str:
        tool_text, names = "", []
        for tool in map(_unwrap, tools):
            params = ""
            for name, param in tool["parameters"]["properties"].items():
                required = ", required" if name in tool["parameters"].get("required", []) else ""
                enum = ", should be one of [{}]".format(", ".join(param["enum"])) if param.get("enum") else ""
                items = (
                    ", where each item should be {}".format(param["items"].get("type", ""))
                    if param.get("items")
                    else ""
                )
                params += f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}"
                params += f"{enum}{items}\n"
            tool_text += (
                f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\n"
                f"Tool Args:\n{params}\n"
            )
            names.append(tool["name"])
        return DEFAULT_TOOL_PROMPT.format(tool_text=tool_text, tool_names=", ".join(names))

    def format_calls(self, calls: list[FunctionCall]) -> str:
        return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in calls)

    def extract(self, text: str) -> str | list[FunctionCall]:
        pattern = re.compile(
            r"Action:\s*([a-zA-Z0-9_]+)\s*Action Input:\s*(.+?)(?=\s*Action:|\s*$)", re.DOTALL
        )
        matches = re.findall(pattern, text)
        if not matches:
            return text
        calls = []
        for name, raw in matches:
            try:
                # strips quote and backtick characters, as LLaMA-Factory does
                arguments = json.loads(raw.strip().strip('"').strip("`"))
            except json.JSONDecodeError:
                return text
            calls.append(FunctionCall(name.strip(), _dumps(arguments)))
        return calls


@dataclass(frozen=True)
class Glm4Tools(ToolFormat):
    """GLM-4: tool specs as indented JSON under a Chinese preamble; calls as ``name\\n{json}``."""

    def describe(self, tools: list[dict]) -> str:
        tool_text = ""
        for tool in map(_unwrap, tools):
            body = json.dumps(tool, indent=4, ensure_ascii=False)
            tool_text += f"\n\n## {tool['name']}\n\n{body}\n{GLM4_CALL_HINT}"
        return GLM4_TOOL_PROMPT.format(tool_text=tool_text)

    def format_calls(self, calls: list[FunctionCall]) -> str:
        if len(calls) > 1:
            raise ValueError("GLM-4 does not support parallel functions.")
        return f"{calls[0].name}\n{calls[0].arguments}"

    def extract(self, text: str) -> str | list[FunctionCall]:
        if "\n" not in text:
            return text
        name, raw = text.split("\n", maxsplit=1)
        try:
            arguments = json.loads(raw.strip())
        except json.JSONDecodeError:
            return text
        return [FunctionCall(name, _dumps(arguments))]


def _calls_from_json(text: str, key: str) -> str | list[FunctionCall]:
    """Parse a JSON object or list of ``{"name": ..., key: {...}}`` (Llama 3 and Mistral)."""
    try:
        parsed = json.loads(text.strip())
    except json.JSONDecodeError:
        return text
    parsed = parsed if isinstance(parsed, list) else [parsed]
    try:
        return [FunctionCall(item["name"], _dumps(item[key])) for item in parsed]
    except (KeyError, TypeError):
        return text


@dataclass(frozen=True)
class Llama3Tools(ToolFormat):
    """Llama 3.x JSON tool calling (tools in the system message, ``parameters`` key)."""

    def describe(self, tools: list[dict]) -> str:
        tool_text = "".join(json.dumps(_wrap(tool), indent=4, ensure_ascii=False) + "\n\n" for tool in tools)
        return LLAMA3_TOOL_PROMPT.format(date=today(), tool_text=tool_text)

    def format_calls(self, calls: list[FunctionCall]) -> str:
        objects = [{"name": name, "parameters": json.loads(arguments)} for name, arguments in calls]
        return _dumps(objects[0] if len(objects) == 1 else objects)

    def extract(self, text: str) -> str | list[FunctionCall]:
        return _calls_from_json(text, "parameters")


@dataclass(frozen=True)
class MistralTools(ToolFormat):
    """Mistral v0.3: ``[AVAILABLE_TOOLS] [...][/AVAILABLE_TOOLS]``, calls as a JSON list."""

    def describe(self, tools: list[dict]) -> str:
        return "[AVAILABLE_TOOLS] " + _dumps([_wrap(tool) for tool in tools]) + "[/AVAILABLE_TOOLS]"

    def format_calls(self, calls: list[FunctionCall]) -> str:
        return _dumps([{"name": name, "arguments": json.loads(arguments)} for name, arguments in calls])

    def extract(self, text: str) -> str | list[FunctionCall]:
        return _calls_from_json(text, "arguments")


@dataclass(frozen=True)
class QwenTools(ToolFormat):
    """Qwen 2.5 / Qwen 3 (Hermes style): ``<tools>`` in the system, ``<tool_call>{json}</tool_call>``."""

    def describe(self, tools: list[dict]) -> str:
        tool_text = "".join("\n" + _dumps(_wrap(tool)) for tool in tools)
        return QWEN_TOOL_PROMPT.format(tool_text=tool_text)

    def format_calls(self, calls: list[FunctionCall]) -> str:
        texts = [_dumps({"name": name, "arguments": json.loads(arguments)}) for name, arguments in calls]
        return "\n".join(f"<tool_call>\n{text}\n</tool_call>" for text in texts)

    def extract(self, text: str) -> str | list[FunctionCall]:
        pattern = re.compile(r"<tool_call>(.+?)</tool_call>(?=\s*<tool_call>|\s*$)", re.DOTALL)
        matches = re.findall(pattern, text)
        if not matches:
            return text
        calls = []
        for raw in matches:
            try:
                call = json.loads(raw.strip())
            except json.JSONDecodeError:
                return text
            if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
                return text
            calls.append(FunctionCall(call["name"], _dumps(call["arguments"])))
        return calls


TOOL_FORMATS.add("default", DefaultTools())
TOOL_FORMATS.add("glm4", Glm4Tools())
TOOL_FORMATS.add("llama3", Llama3Tools())
TOOL_FORMATS.add("mistral", MistralTools())
TOOL_FORMATS.add("qwen", QwenTools())


def parse_call_message(content: str) -> list[FunctionCall]:
    """A dataset's function-call message (one JSON call or a JSON list of them) -> calls.

    Raises ``ValueError`` on bad JSON or missing keys; the template turns it into a DataError.
    """
    parsed = json.loads(content)
    items = parsed if isinstance(parsed, list) else [parsed]
    return [FunctionCall(item["name"], _dumps(item["arguments"])) for item in items]
