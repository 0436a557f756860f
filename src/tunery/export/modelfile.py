"""An Ollama ``Modelfile`` for an export: the weights, the chat template, stop words, system prompt.

``ollama create NAME -f Modelfile`` (run in the export folder) imports the GGUF
file when one was written, else the safetensors folder. The TEMPLATE is built
from the Tunery template's slots, in Ollama's Go-template syntax, so Ollama
prompts the model exactly as training rendered it: the system slot when there is
a system prompt, then each user turn (whose slot ends with the assistant header,
so the last one is the generation prompt), each assistant reply and each tool
result. Templates that glue the system prompt onto the first user message
(Llama 2) do so here too. Tool calls by the assistant are not expressed.

``template: auto`` has no slots: the Modelfile then has no TEMPLATE and Ollama
falls back to the chat template stored in the model (its own detection).
"""

import re

from tunery.data.templates import AutoTemplate
from tunery.data.templates.formatter import BOS, EOS, Slot, Token

HEADER = "# Ollama Modelfile written by `tunery export`; import with: ollama create NAME -f Modelfile\n"


def go_literal(text: str) -> str:
    """Literal text for a Go template: a ``{`` that could start an action is written as an action."""
    return re.sub(r"\{(?=\{|$)", '{{ "{" }}', text)


def slots_to_go(slots: list[Slot], tokenizer, value: str) -> str:
    """Go-template text for a slot list; ``value`` is the Go expression put where ``{{content}}`` is."""
    pieces = []
    for slot in slots:
        if isinstance(slot, str):
            before, *after = slot.split("{{content}}")
            pieces.append(go_literal(before))
            if after:
                pieces.append(value + go_literal(after[0]))
        elif isinstance(slot, Token):
            pieces.append(go_literal(slot.name))  # Ollama parses special tokens in template text
        elif slot == BOS and tokenizer.bos_token_id is not None:
            pieces.append(go_literal(tokenizer.bos_token))
        elif slot == EOS and tokenizer.eos_token_id is not None:
            pieces.append(go_literal(tokenizer.eos_token))
    return "".join(pieces)


def ollama_template(template, tokenizer) -> str | None:
    """The TEMPLATE body for ``template``; None for ``auto`` (no slots to build it from)."""
    if isinstance(template, AutoTemplate):
        return None
    prefix = slots_to_go(template.format_prefix.apply(), tokenizer, "")
    assistant = slots_to_go(template.format_assistant.apply(), tokenizer, "{{ .Content }}")
    observation = slots_to_go(template.format_observation.apply(), tokenizer, "{{ .Content }}")
    if template.system_in_user:
        system = slots_to_go(template.format_system.apply(), tokenizer, "{{ $system }}")
        user = slots_to_go(
            template.format_user.apply(), tokenizer, "{{ if $system }}" + system + "{{ end }}{{ .Content }}"
        )
        head = prefix + "{{ $system := .System }}"
        user += '{{ $system = "" }}'  # only the first user message carries it
    else:
        system = slots_to_go(template.format_system.apply(), tokenizer, "{{ .System }}")
        user = slots_to_go(template.format_user.apply(), tokenizer, "{{ .Content }}")
        head = prefix + "{{ if .System }}" + system + "{{ end }}"
    # System messages are also in .Messages; they are skipped there (already in .System).
    return (
        head + "{{ range .Messages }}"
        + '{{ if eq .Role "user" }}' + user
        + '{{ else if eq .Role "assistant" }}' + assistant
        + '{{ else if eq .Role "tool" }}' + observation
        + "{{ end }}{{ end }}"
    )


def stop_words(template, tokenizer) -> list[str]:
    """The eos token and the template's stop words, each once."""
    words = [tokenizer.eos_token] if tokenizer.eos_token else []
    return list(dict.fromkeys(words + list(template.stop_words)))


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_modelfile(template, tokenizer, source: str) -> str:
    """The Modelfile text; ``source`` is what FROM names (``.`` or ``./model-q8_0.gguf``)."""
    lines = [HEADER, f"FROM {source}"]
    body = ollama_template(template, tokenizer)
    if body is None:
        lines.append("# no TEMPLATE: `template: auto` uses the chat template stored with the model")
    else:
        lines.append(f'TEMPLATE """{body}"""')
    if template.default_system:
        lines.append(f'SYSTEM """{template.default_system}"""')
    lines.extend(f"PARAMETER stop {quote(word)}" for word in stop_words(template, tokenizer))
    return "\n".join(lines) + "\n"
