"""Write a Template as a Jinja chat template (what ``fix_tokenizer`` saves into the tokenizer).

Matches LLaMA-Factory 0.9.5's ``_get_jinja_template`` so an exported tokenizer
chats in the format the model was trained on (e.g. with ``apply_chat_template``
in vLLM or transformers). Only user/assistant/system turns are expressed.
"""

from tunery.data.templates.formatter import BOS, EOS, Slot, Token


def _quote(text: str) -> str:
    return "'" + text.replace("'", r"\'") + "'"


def _slots_to_jinja(slots: list[Slot], tokenizer, placeholder: str = "content") -> str | None:
    """Jinja expression for a slot list, or None when a slot cannot be expressed (a named token)."""
    items = []
    for slot in slots:
        if isinstance(slot, str):
            before, *after = slot.split("{{content}}")
            if before:
                items.append(_quote(before))
            if after:
                items.append(placeholder)
                if after[0]:
                    items.append(_quote(after[0]))
        elif isinstance(slot, Token):
            return None
        # literal token text, not {{ eos_token }}: the eos token may be replaced later
        elif slot == BOS and tokenizer.bos_token_id is not None:
            items.append(_quote(tokenizer.bos_token))
        elif slot == EOS and tokenizer.eos_token_id is not None:
            items.append(_quote(tokenizer.eos_token))
    return " + ".join(items)


def build_chat_template(template, tokenizer) -> str | None:
    """The Jinja source for ``template``; None if it uses named special tokens."""
    prefix = _slots_to_jinja(template.format_prefix.apply(), tokenizer)
    system = _slots_to_jinja(template.format_system.apply(), tokenizer, placeholder="system_message")
    user = _slots_to_jinja(template.format_user.apply(), tokenizer)
    assistant = _slots_to_jinja(template.format_assistant.apply(), tokenizer)
    if None in (prefix, system, user, assistant):
        return None
    jinja = "{{ " + prefix + " }}" if prefix else ""
    if template.default_system:
        jinja += "{% set system_message = " + _quote(template.default_system) + " %}"
    jinja += (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% endif %}"
    )
    if template.system_in_user:
        jinja += (
            "{% for message in loop_messages %}"
            "{% if loop.index0 == 0 and system_message is defined %}"
            "{% set content = " + system + " + message['content'] %}"
            "{% else %}{% set content = message['content'] %}{% endif %}"
        )
    else:
        jinja += (
            "{% if system_message is defined %}{{ " + system + " }}{% endif %}"
            "{% for message in loop_messages %}{% set content = message['content'] %}"
        )
    jinja += (
        "{% if message['role'] == 'user' %}{{ " + user + " }}"
        "{% elif message['role'] == 'assistant' %}{{ " + assistant + " }}"
        "{% endif %}{% endfor %}"
    )
    return jinja
