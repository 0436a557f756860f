"""SFT and PT encoding: exact ids and label masks on a character-level fake template,
plus the real SmolLM2 template."""

import pytest
from datafakes import BOS, EOS, CharTokenizer, FakeTemplate, ids

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.encode import (
    IGNORE_INDEX,
    EncodeOptions,
    chunk_texts,
    encode_supervised,
    encode_texts,
    infer_seqlen,
)

M = IGNORE_INDEX
TOK = CharTokenizer()


def chat(*texts: str, system: str = "") -> Conversation:
    roles = [Role.USER, Role.ASSISTANT]
    return Conversation([Message(roles[i % 2], t) for i, t in enumerate(texts)], system=system)


def encode(conv, template=None, **options):
    opts = EncodeOptions(cutoff_len=options.pop("cutoff_len", 1000), **options)
    return encode_supervised(conv, TOK, template or FakeTemplate(), opts)


@pytest.mark.parametrize(
    ("source", "target", "cutoff", "expected"),
    [(100, 10, 50, (40, 10)), (10, 100, 50, (10, 40)), (60, 40, 50, (30, 20)), (3, 4, 100, (3, 4)),
     (5, 5, 0, (0, 0))],
)
def test_infer_seqlen_matches_llamafactory(source, target, cutoff, expected):
    assert infer_seqlen(source, target, cutoff) == expected


def test_single_turn_learns_only_the_response_and_eos():
    input_ids, labels, full = encode(chat("hi", "yo", system="S"))
    assert input_ids == ids("S:SU:hi") + ids("A:yo") + [EOS]
    assert labels == [M] * 7 + ids("A:yo") + [EOS]
    assert full == len(input_ids)


def test_every_assistant_turn_is_learned():
    input_ids, labels, _ = encode(chat("a", "b", "c", "d"))
    assert input_ids == ids("U:a") + ids("A:b") + [EOS] + ids("U:c") + ids("A:d") + [EOS]
    assert labels == [M] * 3 + ids("A:b") + [EOS] + [M] * 3 + ids("A:d") + [EOS]


def test_train_on_prompt_learns_everything():
    input_ids, labels, _ = encode(chat("a", "b", "c", "d"), train_on_prompt=True)
    assert labels == input_ids


def test_mask_history_learns_only_the_last_turn_in_order():
    input_ids, labels, _ = encode(chat("a", "b", "c", "d"), mask_history=True)
    assert input_ids == ids("U:a") + ids("A:b") + [EOS] + ids("U:c") + ids("A:d") + [EOS]
    assert labels == [M] * 7 + [M] * 3 + ids("A:d") + [EOS]


def test_mask_history_truncation_drops_early_turns_first():
    conv = chat("aaaa", "bb", "c", "d")  # pairs: (6, 5) then (3, 4) tokens
    input_ids, labels, full = encode(conv, mask_history=True, cutoff_len=7)
    assert input_ids == ids("U:c") + ids("A:d") + [EOS]
    assert labels == [M] * 3 + ids("A:d") + [EOS]
    assert full == 18
    input_ids, labels, _ = encode(conv, cutoff_len=7)  # without it the first turn is cut instead
    assert input_ids == ids("U:aa") + ids("A:b")


def test_truncation_keeps_the_response():
    # source 22 tokens, target 5: a target under half the budget is kept whole
    input_ids, labels, full = encode(chat("x" * 20, "ok"), cutoff_len=11)
    assert input_ids == ids("U:xxxx") + ids("A:ok") + [EOS]
    assert labels == [M] * 6 + ids("A:ok") + [EOS]
    assert (len(input_ids), full) == (11, 27)
    input_ids, labels, _ = encode(chat("x" * 20, "ok"), cutoff_len=10)  # else both shrink in proportion
    assert input_ids == ids("U:" + "x" * 7) + ids("A")  # 9 source + 1 target tokens


def test_efficient_eos_learns_eos_at_the_next_prompt_and_at_the_end():
    template = FakeTemplate(efficient_eos=True)
    input_ids, labels, full = encode(chat("a", "b", "c", "d"), template)
    assert input_ids == ids("U:a") + ids("A:b") + ids("U:c") + ids("A:d") + [EOS]
    assert labels == [M] * 3 + ids("A:b") + [EOS, M, M] + ids("A:d") + [EOS]
    assert full == len(input_ids)


def test_efficient_eos_reserves_room_for_the_final_eos():
    input_ids, _, _ = encode(chat("abc", "de"), FakeTemplate(efficient_eos=True), cutoff_len=6)
    assert len(input_ids) == 6 and input_ids[-1] == EOS


def test_pt_texts_get_eos_and_bos_when_the_tokenizer_adds_it():
    assert encode_texts(["ab", "c"], TOK, FakeTemplate()) == [[97, 98, EOS], [99, EOS]]
    assert encode_texts(["ab"], CharTokenizer(add_bos_token=True), FakeTemplate()) == [[BOS, 97, 98, EOS]]


def test_llama3_pretraining_ends_texts_with_end_of_text():
    class Llama3Tokenizer(CharTokenizer):
        def convert_tokens_to_ids(self, token):
            return 7 if token == "<|end_of_text|>" else super().convert_tokens_to_ids(token)

    assert encode_texts(["a"], Llama3Tokenizer(), FakeTemplate(name="llama3")) == [[97, 7]]


def test_chunking_keeps_every_token_and_marks_text_boundaries():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8]]
    rows = chunk_texts(docs, 4)
    assert [row["input_ids"] for row in rows] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert [row["seq_lens"] for row in rows] == [[3, 1], [4]]
    assert all(row["labels"] == row["input_ids"] for row in rows)
    tail = chunk_texts(docs, 3)
    assert [row["input_ids"] for row in tail] == [[1, 2, 3], [4, 5, 6], [7, 8]]  # the short tail is kept


def test_real_smollm2_template_masks_the_prompt(fresh_tokenizer):
    from tunery.data.templates import get_template

    template = get_template("smollm2", fresh_tokenizer)
    conv = chat("What is 2 + 2?", "4", "And 3 + 3?", "6")
    input_ids, labels, _ = encode_supervised(conv, fresh_tokenizer, template, EncodeOptions(cutoff_len=512))
    learned = [token for token, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX]
    assert learned == [label for label in labels if label != IGNORE_INDEX]
    assert fresh_tokenizer.decode(learned) == "4<|im_end|>\n6<|im_end|>\n"
    text = fresh_tokenizer.decode(input_ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nAnd 3 + 3?<|im_end|>\n" in text
