"""A character-level tokenizer and a tiny template for data-pipeline tests.

Each character is one token (``ord(c)``), so expected ids and label masks can be
written by hand. The template follows the ``encode_turns`` contract of
``tunery.data.templates``: one (prompt_ids, response_ids) pair per turn, system
and tools in the first prompt, the response ending with EOS unless
``efficient_eos``.
"""

from dataclasses import dataclass

from tunery.data.conversation import Conversation

EOS, BOS = 2, 1


class CharTokenizer:
    """Just enough of a Hugging Face tokenizer for the data pipeline."""

    name_or_path = "char-tokenizer"
    eos_token_id = EOS
    bos_token_id = BOS
    pad_token_id = 0
    unk_token_id = 3
    eos_token = "</s>"

    def __init__(self, add_bos_token: bool = False):
        self.add_bos_token = add_bos_token

    def get_vocab(self) -> dict[str, int]:
        return {"</s>": EOS, "<s>": BOS}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.encode(t) for t in texts]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        names = {EOS: "</s>", BOS: "<s>"}
        return "".join(names.get(i, chr(i)) if i >= 0 else "" for i in ids)

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"</s>": EOS, "<s>": BOS}.get(token, self.unk_token_id)


@dataclass
class FakeTemplate:
    """``S:<system>`` once, then ``U:<user>`` / ``A:<answer></s>`` per turn."""

    name: str = "fake"
    efficient_eos: bool = False
    default_system: str = ""

    def encode_turns(self, tokenizer, conv: Conversation, **_: object) -> list[tuple[list[int], list[int]]]:
        pairs = []
        for i, (prompt, response) in enumerate(conv.pairs()):
            system = conv.system or self.default_system
            head = f"S:{system}" if i == 0 and system else ""
            end = [] if self.efficient_eos else [EOS]
            pairs.append((tokenizer.encode(f"{head}U:{prompt.content}"),
                          tokenizer.encode(f"A:{response.content}") + end))
        return pairs


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]
