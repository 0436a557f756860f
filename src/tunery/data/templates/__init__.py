"""Chat templates: Conversation -> token ids with a prompt/response split per turn.

``get_template(name, tokenizer)`` returns a private copy of a registered template
(LLaMA-Factory 0.9.5's names and encodings) or, for ``auto``, one derived from
the tokenizer's own Jinja chat template, and fixes the tokenizer for it.
"""

from dataclasses import replace

from tunery.data.templates.auto import AutoTemplate, build_auto_template
from tunery.data.templates.base import Template
from tunery.data.templates.families import TEMPLATES
from tunery.data.templates.formatter import EOS, FunctionFormatter, text
from tunery.data.templates.tools import TOOL_FORMATS, FunctionCall
from tunery.errors import ConfigError

__all__ = ["TEMPLATES", "TOOL_FORMATS", "AutoTemplate", "FunctionCall", "Template", "get_template"]

TEMPLATES.add(
    "auto",
    AutoTemplate(
        name="auto",
        format_user=text("{{content}}"),
        format_assistant=text("{{content}}"),
        format_system=text("{{content}}"),
        format_function=FunctionFormatter(("{{content}}",)),
        format_observation=text("{{content}}"),
    ),
)


def get_template(
    name: str,
    tokenizer=None,
    default_system: str | None = None,
    enable_thinking: bool | None = True,
    preserve_thinking: bool = False,
    fix_tokenizer: bool = True,
    tool_format: str | None = None,
) -> Template:
    """A private copy of template ``name``, with the tokenizer fixed for it.

    ``default_system`` overrides the template's default system prompt (used when a
    conversation has none); ``enable_thinking``/``preserve_thinking`` only matter for
    reasoning templates (qwen3, deepseekr1) and default to LLaMA-Factory's. With
    ``fix_tokenizer`` (the default) ``template.fix_tokenizer(tokenizer)`` is applied, which
    may add tokens; it is idempotent. ``tokenizer`` may be None only for named templates.
    ``tool_format`` (a name in ``TOOL_FORMATS``) replaces the template's own tool format.
    """
    if name not in TEMPLATES:
        raise ConfigError(f"template: {TEMPLATES.describe_miss(name)}")
    base = TEMPLATES.get(name)
    if isinstance(base, AutoTemplate):
        template = build_auto_template(base, tokenizer, default_system)
    else:
        template = replace(
            base,
            stop_words=list(base.stop_words),
            default_system=base.default_system if default_system is None else default_system,
        )
    if tool_format:
        use_tool_format(template, tool_format)
    template.enable_thinking = enable_thinking
    template.preserve_thinking = preserve_thinking
    if fix_tokenizer and tokenizer is not None:
        template.fix_tokenizer(tokenizer)
    return template


def use_tool_format(template: Template, tool_format: str) -> None:
    """Describe tools and render calls in ``tool_format`` instead of the template's own format.

    As LLaMA-Factory 0.9.5 does for its ``tool_format`` argument, a named template's calls
    then become the bare call text plus eos (no eos for ``efficient_eos`` templates): the
    family's own call slots belong to its own format. ``auto`` keeps its slots, since the
    tokenizer's Jinja template writes the turn around the call.
    """
    if tool_format not in TOOL_FORMATS:
        raise ConfigError(f"tool_format: {TOOL_FORMATS.describe_miss(tool_format)}")
    if isinstance(template, AutoTemplate):
        slots = template.format_function.slots
    else:
        slots = ("{{content}}",) if template.efficient_eos else ("{{content}}", EOS)
    template.format_function = FunctionFormatter(slots, tool_format=tool_format)
    template.tool_format = tool_format
