"""The built-in chat templates, one registration per model family.

Names, slots, stop words, default system prompts and flags are LLaMA-Factory
0.9.5's (``baichuan2``: its last definition, from 0.9.2), so a config that says
``template: qwen`` trains on the same tokens in Tunery as there. Golden files
in tests/unit/data/golden/ pin every one of them against the real library.
BLOOM base models use ``default``.
"""

from tunery.data.templates.base import Template
from tunery.data.templates.formatter import BOS, EOS, Formatter, FunctionFormatter, Token, text
from tunery.registry import Registry

TEMPLATES: Registry[Template] = Registry("template")

_CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_ASSISTANT = "{{content}}<|im_end|>\n"
_CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"
_CHATML_TOOL = "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_QWEN_OBSERVATION = (
    "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
)
_GEMMA_USER = "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n"
_GEMMA_TOOL = "<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n"
_LLAMA2_SYSTEM = "<<SYS>>\n{{content}}\n<</SYS>>\n\n"


def register(
    name: str,
    user: Formatter | None = None,
    assistant: Formatter | None = None,
    system: Formatter | None = None,
    function: FunctionFormatter | None = None,
    observation: Formatter | None = None,
    prefix: Formatter | None = None,
    **options,
) -> None:
    """Register a template, filling unset formatters with LLaMA-Factory's defaults.

    Defaults: user/system are the bare content; the assistant is content + eos (bare content
    when ``efficient_eos``); function calls use the assistant's slots in the default tool
    format; observations are formatted like user turns.
    """
    plain = text("{{content}}")
    default_assistant = plain if options.get("efficient_eos") else text("{{content}}", EOS)
    assistant = assistant or default_assistant
    tool_format = options.pop("tool_format", "default")
    TEMPLATES.add(
        name,
        Template(
            name=name,
            format_user=user or plain,
            format_assistant=assistant,
            format_system=system or plain,
            format_function=function or FunctionFormatter(assistant.slots, tool_format="default"),
            format_observation=observation or user or plain,
            format_prefix=prefix or Formatter(),
            tool_format=tool_format,
            **options,
        ),
    )


def _chatml_like(name: str, **options) -> None:
    register(
        name,
        user=text(_CHATML_USER),
        assistant=text(_CHATML_ASSISTANT),
        system=text(_CHATML_SYSTEM),
        **options,
    )


def _qwen_like(name: str, **options) -> None:
    _chatml_like(
        name,
        function=FunctionFormatter((_CHATML_ASSISTANT,), tool_format="qwen"),
        observation=text(_QWEN_OBSERVATION),
        tool_format="qwen",
        stop_words=["<|im_end|>"],
        replace_eos=True,
        **options,
    )


register(
    "default",
    user=text("Human: {{content}}", EOS, "\nAssistant:"),
    assistant=text("{{content}}", EOS, "\n"),
    system=text("System: {{content}}", EOS, "\n"),
    replace_jinja_template=True,
)
register("empty", assistant=text("{{content}}"))
register(
    "alpaca",
    user=text("### Instruction:\n{{content}}\n\n### Response:\n"),
    assistant=text("{{content}}", EOS, "\n\n"),
    default_system=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
    ),
    replace_jinja_template=True,
)
register(
    "vicuna",
    user=text("USER: {{content}} ASSISTANT:"),
    default_system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    replace_jinja_template=True,
)
register(
    "baichuan2",
    user=text("<reserved_106>{{content}}<reserved_107>"),
    efficient_eos=True,
)
_chatml_like(
    "chatml",
    observation=text(_CHATML_TOOL),
    stop_words=["<|im_end|>", "<|im_start|>"],
    replace_eos=True,
    replace_jinja_template=True,
)
_chatml_like(
    "chatml_de",
    observation=text(_CHATML_TOOL),
    default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
    stop_words=["<|im_end|>", "<|im_start|>"],
    replace_eos=True,
    replace_jinja_template=True,
)
_chatml_like("yi", stop_words=["<|im_end|>"])
_chatml_like("smollm", stop_words=["<|im_end|>"])
_chatml_like(
    "smollm2",
    stop_words=["<|im_end|>"],
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
)
_chatml_like("cpm4", observation=text(_CHATML_TOOL), prefix=text(BOS), stop_words=["<|im_end|>"])
_qwen_like("qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
_qwen_like("qwen3", reasoning=True)
_qwen_like("qwen3_nothink")
register(
    "llama2",
    user=text(BOS, "[INST] {{content}} [/INST]"),
    system=text(_LLAMA2_SYSTEM),
    system_in_user=True,
)
register(
    "llama2_zh",
    user=text(BOS, "[INST] {{content}} [/INST]"),
    system=text(_LLAMA2_SYSTEM),
    default_system="You are a helpful assistant. 你是一个乐于助人的助手。",
    system_in_user=True,
)
register(
    "llama3",
    user=text(
        "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    assistant=text("{{content}}<|eot_id|>"),
    system=text("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"),
    function=FunctionFormatter(("{{content}}<|eot_id|>",), tool_format="llama3"),
    observation=text(
        "<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    prefix=text(BOS),
    tool_format="llama3",
    stop_words=["<|eot_id|>", "<|eom_id|>"],
    replace_eos=True,
)
register(
    "llama4",
    user=text(
        "<|header_start|>user<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n"
    ),
    assistant=text("{{content}}<|eot|>"),
    system=text("<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>"),
    function=FunctionFormatter(("{{content}}<|eot|>",), tool_format="llama3"),
    observation=text(
        "<|header_start|>ipython<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n"
    ),
    prefix=text(BOS),
    tool_format="llama3",
    stop_words=["<|eot|>", "<|eom|>"],
    replace_eos=True,
)
register(
    "mistral",
    user=text("[INST] {{content}}[/INST]"),
    assistant=text(" {{content}}", EOS),
    system=text("{{content}}\n\n"),
    function=FunctionFormatter(("[TOOL_CALLS] {{content}}", EOS), tool_format="mistral"),
    observation=text('[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]'),
    prefix=text(BOS),
    tool_format="mistral",
    system_in_user=True,
)
register(
    "mistral_small",
    user=text("[INST]{{content}}[/INST]"),
    system=text("[SYSTEM_PROMPT]{{content}}[/SYSTEM_PROMPT]"),
    function=FunctionFormatter(("[TOOL_CALLS]{{content}}", EOS), tool_format="mistral"),
    observation=text('[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]'),
    prefix=text(BOS),
    tool_format="mistral",
)
register(
    "chatglm3",
    user=text(Token("<|user|>"), "\n", "{{content}}", Token("<|assistant|>")),
    assistant=text("\n", "{{content}}"),
    system=text(Token("<|system|>"), "\n", "{{content}}"),
    function=FunctionFormatter(("{{content}}",), tool_format="glm4"),
    observation=text(Token("<|observation|>"), "\n", "{{content}}", Token("<|assistant|>")),
    prefix=text(Token("[gMASK]"), Token("sop")),
    tool_format="glm4",
    stop_words=["<|user|>", "<|observation|>"],
    efficient_eos=True,
)
register(
    "glm4",
    user=text("<|user|>\n{{content}}<|assistant|>"),
    assistant=text("\n{{content}}"),
    system=text("<|system|>\n{{content}}"),
    function=FunctionFormatter(("{{content}}",), tool_format="glm4"),
    observation=text("<|observation|>\n{{content}}<|assistant|>"),
    prefix=text("[gMASK]<sop>"),
    tool_format="glm4",
    stop_words=["<|user|>", "<|observation|>"],
    efficient_eos=True,
)
register(
    "gemma",
    user=text(_GEMMA_USER),
    assistant=text("{{content}}<end_of_turn>\n"),
    system=text("{{content}}\n\n"),
    observation=text(_GEMMA_TOOL),
    prefix=text(BOS),
    stop_words=["<end_of_turn>"],
    replace_eos=True,
    system_in_user=True,
)
register(
    "gemma2",
    user=text(_GEMMA_USER),
    assistant=text("{{content}}<end_of_turn>\n"),
    system=text("{{content}}\n\n"),
    observation=text(_GEMMA_TOOL),
    prefix=text(BOS),
    stop_words=["<eos>", "<end_of_turn>"],
    efficient_eos=True,
    system_in_user=True,
)
register(
    "gemma3",  # text-only: images need a processor Tunery does not drive
    user=text(_GEMMA_USER),
    assistant=text("{{content}}<end_of_turn>\n"),
    system=text("{{content}}\n\n"),
    observation=text(_GEMMA_TOOL),
    prefix=text(BOS),
    stop_words=["<end_of_turn>"],
    replace_eos=True,
    system_in_user=True,
)
register(
    "phi",
    user=text("<|user|>\n{{content}}<|end|>\n<|assistant|>\n"),
    assistant=text("{{content}}<|end|>\n"),
    system=text("<|system|>\n{{content}}<|end|>\n"),
    stop_words=["<|end|>"],
    replace_eos=True,
)
register(
    "phi4",
    user=text("<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>"),
    assistant=text("{{content}}<|im_end|>"),
    system=text("<|im_start|>system<|im_sep|>{{content}}<|im_end|>"),
    stop_words=["<|im_end|>"],
    replace_eos=True,
)
register(
    "deepseek",
    user=text("User: {{content}}\n\nAssistant:"),
    system=text("{{content}}\n\n"),
    prefix=text(BOS),
)
register("deepseek3", user=text("<｜User｜>{{content}}<｜Assistant｜>"), prefix=text(BOS))
register("deepseekr1", user=text("<｜User｜>{{content}}<｜Assistant｜>"), prefix=text(BOS), reasoning=True)
register(
    "zephyr",
    user=text("<|user|>\n{{content}}", EOS, "<|assistant|>\n"),
    system=text("<|system|>\n{{content}}", EOS),
    default_system="You are Zephyr, a helpful assistant.",
)
