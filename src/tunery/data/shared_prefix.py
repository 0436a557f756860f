"""Flat batches of example pairs whose shared prompt is encoded once.

Both examples of a preference pair begin with the same prompt (DPO: chosen and
rejected answer one question; KTO: an answer and its mismatched KL answer). The
plain flat layout (``collate_flat``) runs that prompt through the model twice.
Here each pair becomes ONE segment ``[prompt | first answer | second answer]``:

- position ids restart at the prompt's length for the second answer, so both
  answers see exactly the positions they would see alone;
- the attention registered in ``tunery.model.attention`` lets the first answer
  attend to prompt + itself and the second to prompt + itself (never to the
  first answer), using the ``pair_layout`` lengths carried in the batch;
- ``logp_index`` / ``logp_targets`` / ``logp_owners`` say, for every label token,
  which hidden state predicts it (the prompt's last state for each answer's first
  token) and which example it belongs to, since "the previous position" is no
  longer the predictor at the start of the second answer; ``last_index`` gives each
  example's last token (where a reward model reads its score).

Log-probabilities and gradients equal those of the plain layout; the prompt's
tokens are computed once, which saves their share of the work and activation
memory (about a quarter of the tokens of ``dpo_en_demo``).
"""

from collections.abc import Mapping, Sequence

import torch

from tunery.data.collate import split_examples
from tunery.errors import DataError
from tunery.labels import IGNORE_INDEX

Example = tuple[list[int], list[int]]  # (input_ids, labels)


def shared_prefix_length(first: Example, second: Example) -> int:
    """Tokens both examples start with that neither learns, leaving each at least one token of its own."""
    (ids_a, labels_a), (ids_b, labels_b) = first, second
    limit = min(len(ids_a), len(ids_b)) - 1
    length = 0
    while (length < limit and ids_a[length] == ids_b[length]
           and labels_a[length] == IGNORE_INDEX and labels_b[length] == IGNORE_INDEX):
        length += 1
    return length


def pair_examples(rows: Sequence[Mapping]) -> list[tuple[Example, Example]]:
    """The two examples of every row (a row of a pair stage holds exactly two)."""
    examples = split_examples(rows)
    if len(examples) != 2 * len(rows):
        raise DataError("Pair batches need rows of exactly two examples; re-encode the dataset "
                        "(overwrite_cache: true).")
    return [(examples[i], examples[i + 1]) for i in range(0, len(examples), 2)]


def pair_tokens(row: Mapping) -> int:
    """Tokens a pair row occupies in the shared layout (its prompt counted once)."""
    (first, second), = pair_examples([row])
    return len(first[0]) + len(second[0]) - shared_prefix_length(first, second)


def collate_shared_pairs(rows: Sequence[Mapping]) -> dict:
    """One flat row ``[1, T]`` of ``[prompt | first | second]`` segments plus the layout tensors."""
    ids: list[int] = []
    positions: list[int] = []
    layout: list[list[int]] = []
    index: list[int] = []
    targets: list[int] = []
    owners: list[int] = []
    last: list[int] = []
    for pair_number, (first, second) in enumerate(pair_examples(rows)):
        start, prefix = len(ids), shared_prefix_length(first, second)
        first_flat = list(range(start, start + len(first[0])))
        second_begin = start + len(first[0])
        second_flat = first_flat[:prefix] + list(range(second_begin, second_begin + len(second[0]) - prefix))
        ids += first[0] + second[0][prefix:]
        positions += list(range(len(first[0]))) + list(range(prefix, len(second[0])))
        layout.append([prefix, len(first[0]) - prefix, len(second[0]) - prefix])
        last += [first_flat[-1], second_flat[-1]]
        for number, (example, flat) in enumerate(((first, first_flat), (second, second_flat))):
            for j in range(1, len(example[1])):  # token j is predicted by the state of token j - 1
                if example[1][j] != IGNORE_INDEX:
                    index.append(flat[j - 1])
                    targets.append(example[1][j])
                    owners.append(2 * pair_number + number)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "pair_layout": torch.tensor(layout, dtype=torch.long),
        "logp_index": torch.tensor(index, dtype=torch.long),
        "logp_targets": torch.tensor(targets, dtype=torch.long),
        "logp_owners": torch.tensor(owners, dtype=torch.long),
        "last_index": torch.tensor(last, dtype=torch.long),
        "example_count": 2 * len(rows),
    }


def group_by_tokens(rows: Sequence[Mapping], max_tokens: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` row ranges, in order, of at most ``max_tokens`` shared-layout tokens each
    (a pair longer than that gets a range of its own); ``max_tokens`` <= 0: one range."""
    if max_tokens <= 0:
        return [(0, len(rows))]
    ranges, lo, used = [], 0, 0
    for hi, row in enumerate(rows):
        size = pair_tokens(row)
        if hi > lo and used + size > max_tokens:
            ranges.append((lo, hi))
            lo, used = hi, 0
        used += size
    ranges.append((lo, len(rows)))
    return ranges
