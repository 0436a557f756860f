"""The Template: renders a Conversation into (prompt ids, response ids) per turn.

The label mask is decided here, where each turn is rendered: everything a turn's
prompt side produces (prefix, system, tools, user/observation text) is prompt,
everything its response side produces is response. The encoding follows
LLaMA-Factory 0.9.5's ``Template._encode`` exactly (each text slot tokenized on
its own), so a template with one of its names yields the same ids.
"""

import json
import re
from dataclasses import dataclass, field

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates.formatter import BOS, EOS, Formatter, FunctionFormatter, Slot, Token
from tunery.data.templates.tools import TOOL_FORMATS
from tunery.errors import ConfigError, DataError

PROMPT_ROLES = (Role.USER, Role.OBSERVATION)
RESPONSE_ROLES = (Role.ASSISTANT, Role.FUNCTION_CALL)


@dataclass
class Template:
    """One chat format. Build instances with ``get_template``, which returns a private copy."""

    name: str
    format_user: Formatter
    format_assistant: Formatter
    format_system: Formatter
    format_function: FunctionFormatter
    format_observation: Formatter
    format_prefix: Formatter = field(default_factory=Formatter)
    tool_format: str = "default"
    default_system: str = ""
    stop_words: list[str] = field(default_factory=list)
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    tool_call_words: tuple[str, str] = ("<tool_call>", "</tool_call>")
    efficient_eos: bool = False  # eos appended once after the last response (by the data encoder)
    replace_eos: bool = False  # the first stop word becomes the tokenizer's eos token
    replace_jinja_template: bool = False  # fix_tokenizer writes this template as the chat_template
    system_in_user: bool = False  # Llama-2 style: system text is glued onto the first user message
    reasoning: bool = False  # LLaMA-Factory's ReasoningTemplate (empty <think></think> handling)
    enable_thinking: bool | None = True
    preserve_thinking: bool = False

    # ----- public API -------------------------------------------------------------------------------

    def encode_turns(
        self, tokenizer, conv: Conversation, discard_history_cot: bool = False
    ) -> list[tuple[list[int], list[int]]]:
        """One (prompt_ids, response_ids) pair per turn; system and tools are in the first prompt.

        ``discard_history_cot`` (LLaMA-Factory's ``mask_history`` for reasoning templates) drops
        the thoughts of all but the last response.
        """
        messages = check_turns(conv, ends_with_prompt=False)
        if not self.reasoning:
            encoded = self._encode(tokenizer, messages, conv.system, conv.tools)
            return [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]
        return self._encode_reasoning_turns(tokenizer, conv, messages, discard_history_cot)

    def encode_prompt(self, tokenizer, conv: Conversation) -> list[int]:
        """All ids up to where the model starts answering (history + final user/observation turn)."""
        messages = [*check_turns(conv, ends_with_prompt=True), Message(Role.ASSISTANT, "")]
        if self.reasoning and not self.preserve_thinking:
            messages = [
                self._without_thought(m) if i % 2 == 1 and i < len(messages) - 2 else m
                for i, m in enumerate(messages)
            ]
        encoded = self._encode(tokenizer, messages, conv.system, conv.tools)
        prompt = [i for ids in encoded[:-1] for i in ids]
        if self.reasoning and not self.enable_thinking:
            prompt += self.thought_ids(tokenizer)  # the model is told it has finished thinking
        return prompt

    def format_tools(self, tools_json: str) -> str:
        """The text that describes ``tools_json`` (a JSON list) in the system prompt; '' if empty."""
        try:
            tools = json.loads(tools_json)
        except json.JSONDecodeError:
            bad = tools_json[:80]
            raise DataError(f"Tool list is not valid JSON: {bad!r}; fix the 'tools' field.") from None
        if not isinstance(tools, list):
            tools = [tools]
        if not tools:
            return ""
        try:
            return TOOL_FORMATS.get(self.tool_format).describe(tools)
        except (KeyError, TypeError, AttributeError) as err:
            raise DataError(
                f"Tool description is missing {err} (each tool needs 'name' and 'parameters' with "
                f"'properties'): {tools_json[:80]!r}."
            ) from None

    def extract_tool_calls(self, text: str) -> list[dict] | str:
        """Tool calls in generated text as ``[{"name", "arguments" (JSON text)}]``, or ``text`` if none."""
        result = TOOL_FORMATS.get(self.tool_format).extract(text)
        if isinstance(result, str):
            return result
        return [{"name": call.name, "arguments": call.arguments} for call in result]

    def get_stop_token_ids(self, tokenizer) -> list[int]:
        """Ids that end generation: the eos token and every stop word."""
        ids = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(w) for w in self.stop_words}
        return sorted(i for i in ids if i is not None)

    def thought_ids(self, tokenizer) -> list[int]:
        return tokenizer.encode(self.thought_words[0] + self.thought_words[1], add_special_tokens=False)

    def fix_tokenizer(self, tokenizer) -> int:
        """Make the tokenizer fit this template (LLaMA-Factory's fix_special_tokens + fix_jinja_template).

        Replaces the eos token by the first stop word when ``replace_eos``, adds an eos token if
        there is none, uses eos as pad if there is no pad, registers the remaining stop words as
        special tokens, and installs this template as the chat template when the tokenizer has
        none (or ``replace_jinja_template``). Idempotent. Returns how many tokens were added to the
        vocabulary (the model's embeddings must grow by that much).
        """
        before = len(tokenizer)
        stop_words = list(self.stop_words)
        if self.replace_eos:
            if not stop_words:
                raise ConfigError(f"Template '{self.name}' sets replace_eos but has no stop words.")
            set_eos_token(tokenizer, stop_words.pop(0))
        if tokenizer.eos_token_id is None:
            set_eos_token(tokenizer, "<|endoftext|>")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if stop_words:
            # extend (not replace) the extra special tokens: same ids as LLaMA-Factory, and
            # the model's own extra special tokens keep being skipped when decoding
            tokenizer.add_special_tokens(
                {"extra_special_tokens": stop_words}, replace_extra_special_tokens=False
            )
        if tokenizer.chat_template is None or self.replace_jinja_template:
            from tunery.data.templates.jinja import build_chat_template

            jinja = build_chat_template(self, tokenizer)
            if jinja is not None:
                tokenizer.chat_template = jinja
        return len(tokenizer) - before

    # ----- encoding ---------------------------------------------------------------------------------

    def _encode(self, tokenizer, messages: list[Message], system: str, tools: str) -> list[list[int]]:
        """Token ids of each message (the first one also carries prefix, system and tools)."""
        system = system or self.default_system
        encoded = []
        for i, message in enumerate(messages):
            elements: list[Slot] = []
            system_text = ""
            if i == 0:
                elements += self.format_prefix.apply()
                if system or tools:
                    tool_text = self.format_tools(tools) if tools else ""
                    if self.system_in_user:
                        system_text = self.format_system.apply(content=system + tool_text)[0]
                    else:
                        elements += self.format_system.apply(content=system + tool_text)
            elements += self._format_message(i, message, system_text)
            encoded.append(slots_to_ids(tokenizer, elements))
        return encoded

    def _format_message(self, i: int, message: Message, system_text: str) -> list[Slot]:
        if message.role == Role.USER:
            if self.system_in_user:
                return self.format_user.apply(content=system_text + message.content)
            return self.format_user.apply(content=message.content, idx=str(i // 2))
        if message.role == Role.ASSISTANT:
            return self.format_assistant.apply(content=message.content)
        if message.role == Role.OBSERVATION:
            return self.format_observation.apply(content=message.content)
        try:
            if self.system_in_user:  # LLaMA-Factory's Llama2Template passes no thought/tool-call words
                return self.format_function.apply_call(message.content)
            return self.format_function.apply_call(message.content, self.thought_words, self.tool_call_words)
        except ValueError as err:
            raise DataError(
                f"Cannot render function_call message with template '{self.name}': {err}."
            ) from None

    # ----- reasoning (thinking) templates -----------------------------------------------------------

    def _without_thought(self, message: Message) -> Message:
        open_, close = map(re.escape, self.thought_words)
        content = re.sub(rf"{open_}(.*?){close}", "", message.content, flags=re.DOTALL).lstrip("\n")
        return Message(message.role, content)

    def _has_thought(self, content: str) -> bool:
        return self.thought_words[0].strip() in content or self.thought_words[1].strip() in content

    def _encode_reasoning_turns(
        self, tokenizer, conv: Conversation, messages: list[Message], discard_history_cot: bool
    ) -> list[tuple[list[int], list[int]]]:
        """Responses without a thought get an empty one: learned if thinking is on, prompt if off."""
        for i in range(1, len(messages), 2):
            last = i == len(messages) - 1
            if self.enable_thinking is False or (discard_history_cot and not last):
                messages[i] = self._without_thought(messages[i])
        encoded = self._encode(tokenizer, messages, conv.system, conv.tools)
        turn_starts = [len(messages) - 2] if discard_history_cot else range(0, len(messages), 2)
        for i in turn_starts:
            if self._has_thought(messages[i + 1].content):
                continue
            if self.enable_thinking:
                encoded[i + 1] = self.thought_ids(tokenizer) + encoded[i + 1]
            else:
                encoded[i] = encoded[i] + self.thought_ids(tokenizer)
        return [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]


def set_eos_token(tokenizer, eos_token: str) -> None:
    if tokenizer.eos_token != eos_token:
        tokenizer.add_special_tokens({"eos_token": eos_token})


def slots_to_ids(tokenizer, elements: list[Slot]) -> list[int]:
    """Each text slot is tokenized separately (never merged across slots), as in LLaMA-Factory."""
    ids: list[int] = []
    for elem in elements:
        if isinstance(elem, str):
            if elem:
                ids += tokenizer.encode(elem, add_special_tokens=False)
        elif isinstance(elem, Token):
            ids.append(tokenizer.convert_tokens_to_ids(elem.name))
        elif elem == BOS and tokenizer.bos_token_id is not None:
            ids.append(tokenizer.bos_token_id)
        elif elem == EOS and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids


def check_turns(conv: Conversation, ends_with_prompt: bool) -> list[Message]:
    """The messages as a list, after checking they alternate prompt and response sides."""
    messages = list(conv.messages)
    if not messages:
        raise DataError("Conversation has no messages; every example needs at least one user turn.")
    for i, message in enumerate(messages):
        expected = PROMPT_ROLES if i % 2 == 0 else RESPONSE_ROLES
        if message.role not in expected:
            side = "user/observation" if i % 2 == 0 else "assistant/function_call"
            raise DataError(
                f"Message {i} has role '{message.role}' but a {side} turn was expected; "
                "turns must alternate, starting with the user."
            )
    if ends_with_prompt and len(messages) % 2 == 0:
        raise DataError("A generation prompt needs a conversation that ends with a user/observation turn.")
    if not ends_with_prompt and len(messages) % 2 == 1:
        raise DataError("The conversation ends with a user turn; a training example must end in a response.")
    return messages
