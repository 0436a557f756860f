"""Bin-pack encoded examples into rows of at most ``cutoff_len`` tokens.

The packer is LLaMA-Factory's greedy knapsack: fill one row at a time, each
time taking the longest remaining example that still fits (binary search over
the sorted lengths). Rows carry ``seq_lens``, the length of every example in
the row, so collation can keep examples apart at attention time (Tunery always
does, which is what ``neat_packing`` asks for). Padding is left to collation.
"""

from bisect import bisect_right
from collections.abc import Sequence


def greedy_knapsack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into bins whose lengths sum to at most ``capacity``.

    Deterministic: equal lengths are taken in a fixed order, and each bin lists its
    indices in ascending order (dataset order inside a row).
    """
    too_long = [i for i, length in enumerate(lengths) if length > capacity]
    if too_long:
        raise ValueError(f"example {too_long[0]} has {lengths[too_long[0]]} tokens > capacity {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    keys = [lengths[i] for i in order]
    bins: list[list[int]] = []
    while order:
        remaining = capacity
        current: list[int] = []
        while True:
            position = bisect_right(keys, remaining) - 1
            if position < 0:
                break
            remaining -= keys.pop(position)
            current.append(order.pop(position))
        bins.append(sorted(current))
    return bins


def pack_examples(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                  cutoff_len: int) -> dict[str, list]:
    """Packed columns ``input_ids``, ``labels`` and ``seq_lens`` (one entry per row)."""
    lengths = [len(ids) for ids in input_ids]
    packed: dict[str, list] = {"input_ids": [], "labels": [], "seq_lens": []}
    for group in greedy_knapsack(lengths, cutoff_len):
        packed["input_ids"].append([token for i in group for token in input_ids[i]])
        packed["labels"].append([label for i in group for label in labels[i]])
        packed["seq_lens"].append([lengths[i] for i in group])
    return packed


def unpack_row(row: dict) -> list[tuple[list[int], list[int]]]:
    """The (input_ids, labels) of each example in a row (the row itself if it is not packed)."""
    ids, labels = list(row["input_ids"]), list(row["labels"])
    seq_lens = row.get("seq_lens") or [len(ids)]
    examples, start = [], 0
    for length in seq_lens:
        examples.append((ids[start:start + length], labels[start:start + length]))
        start += length
    return examples
