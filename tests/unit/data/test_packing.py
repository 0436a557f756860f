"""Bin-packing: every token exactly once, rows within cutoff_len, correct seq_lens."""

import random
from collections import Counter

import pytest

from tunery.data.packing import greedy_knapsack, pack_examples, unpack_row


def test_greedy_knapsack_takes_the_longest_that_fits():
    # capacity 10: [8, 2] first (8 is the longest, then 2 fits), then [7, 3], then [5, 4, 1]
    lengths = [5, 8, 3, 2, 7, 4, 1]
    bins = greedy_knapsack(lengths, 10)
    assert [sorted((lengths[i] for i in b), reverse=True) for b in bins] == [[8, 2], [7, 3], [5, 4, 1]]
    assert all(b == sorted(b) for b in bins)


def test_greedy_knapsack_uses_every_index_once_and_respects_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    bins = greedy_knapsack(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert greedy_knapsack(lengths, 64) == bins  # deterministic
    assert len(bins) <= sum(lengths) // 64 + 1 + len(bins) // 10  # near-optimal fill


def test_too_long_examples_are_refused():
    with pytest.raises(ValueError, match="capacity"):
        greedy_knapsack([3, 11], 10)


def test_packing_keeps_every_token_exactly_once():
    rng = random.Random(1)
    examples = [[(n, pos) for pos in range(rng.randint(1, 30))] for n in range(100)]
    input_ids = [[n * 1000 + pos for n, pos in ex] for ex in examples]
    labels = [[-100 if pos % 3 == 0 else n * 1000 + pos for n, pos in ex] for ex in examples]
    packed = pack_examples(input_ids, labels, 50)
    flat = [token for row in packed["input_ids"] for token in row]
    assert Counter(flat) == Counter(token for ex in input_ids for token in ex)
    for row_ids, row_labels, seq_lens in zip(packed["input_ids"], packed["labels"], packed["seq_lens"],
                                             strict=True):
        assert len(row_ids) == len(row_labels) == sum(seq_lens) <= 50
        start = 0
        for length in seq_lens:  # each segment is one whole example, labels aligned with it
            piece = row_ids[start:start + length]
            number = piece[0] // 1000
            assert piece == input_ids[number]
            assert row_labels[start:start + length] == labels[number]
            start += length


def test_unpack_row_splits_packed_rows_and_passes_plain_rows():
    row = {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, -100, 4, 5], "seq_lens": [2, 3]}
    assert unpack_row(row) == [([1, 2], [-100, 2]), ([3, 4, 5], [-100, 4, 5])]
    assert unpack_row({"input_ids": [1], "labels": [1]}) == [([1], [1])]
