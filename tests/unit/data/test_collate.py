"""Flat (padding-free) and padded collation of encoded rows."""

import pytest
import torch

from tunery.data.collate import collate_flat, collate_padded, count_label_tokens, split_flat
from tunery.errors import DataError

ROWS = [
    {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
    {"input_ids": [4, 5, 6, 7, 8], "labels": [4, 5, 6, 7, 8], "seq_lens": [2, 3]},
]


def test_flat_concatenates_all_examples_into_one_row():
    batch = collate_flat(ROWS)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert batch["input_ids"].dtype == torch.long


def test_flat_masks_the_first_label_of_every_example():
    labels = collate_flat(ROWS)["labels"].tolist()[0]
    # examples start at 0, 3 and 5 (the packed row holds two)
    assert labels == [-100, 2, 3, -100, 5, -100, 7, 8]


def test_flat_position_ids_restart_for_each_example():
    assert collate_flat(ROWS)["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]


def test_flat_carries_flash_attention_boundaries():
    batch = collate_flat(ROWS)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 8]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert torch.equal(batch["cu_seq_lens_k"], batch["cu_seq_lens_q"])
    assert batch["max_length_q"] == batch["max_length_k"] == 3


def test_flat_leaves_the_rows_untouched():
    rows = [{"input_ids": [1, 2], "labels": [1, 2]}]
    collate_flat(rows)
    assert rows == [{"input_ids": [1, 2], "labels": [1, 2]}]


def test_padded_right_pads_and_splits_packed_rows():
    batch = collate_padded(ROWS, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0], [6, 7, 8]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, 5, -100], [6, 7, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]


def test_flat_and_padded_count_the_same_label_tokens():
    # Labels at an example's first position are never predicted, flat or padded.
    assert count_label_tokens(collate_flat(ROWS)) == count_label_tokens(collate_padded(ROWS, 0)) == 5


@pytest.mark.parametrize(
    "row, message",
    [
        ({"input_ids": [1, 2], "labels": [1]}, "2 input_ids but 1 labels"),
        ({"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lens": [1, 1]}, "do not tile"),
        ({"input_ids": [1, 2], "labels": [1, 2], "seq_lens": [2, 0]}, "do not tile"),
    ],
)
def test_bad_rows_are_data_errors_naming_the_row(row, message):
    with pytest.raises(DataError, match=f"row 1 .*{message}"):
        collate_flat([ROWS[0], row])


def test_empty_batch_is_a_data_error():
    with pytest.raises(DataError, match="empty batch"):
        collate_padded([], pad_token_id=0)


def piece_lengths(pieces: list[dict]) -> list[list[int]]:
    return [torch.diff(piece["cu_seq_lens_q"]).tolist() for piece in pieces]


def test_split_flat_keeps_whole_examples_in_order_next_fit():
    rows = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (5, 3, 9, 2, 2, 1)]
    batch = collate_flat(rows)
    pieces = split_flat(batch, 8)
    # 5+3 fit; 9 is longer than the cap and goes alone; 2+2+1 fit
    assert piece_lengths(pieces) == [[5, 3], [9], [2, 2, 1]]
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(torch.cat([piece[key] for piece in pieces], dim=1), batch[key])
    for piece in pieces:
        assert piece["cu_seq_lens_q"][0] == 0 and piece["cu_seq_lens_q"][-1] == piece["input_ids"].shape[1]
        assert piece["max_length_q"] == piece["max_length_k"] == max(piece_lengths([piece])[0])
        assert (piece["position_ids"][0, piece["cu_seq_lens_q"][:-1].long()] == 0).all()
    assert sum(count_label_tokens(piece) for piece in pieces) == count_label_tokens(batch)


@pytest.mark.parametrize("max_tokens", [0, 22, 100])
def test_split_flat_without_a_binding_cap_returns_the_batch(max_tokens):
    rows = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (5, 3, 9, 2, 2, 1)]
    batch = collate_flat(rows)
    assert split_flat(batch, max_tokens) == [batch]


def test_split_flat_leaves_other_batches_whole():
    padded = collate_padded(ROWS, pad_token_id=0)
    assert split_flat(padded, 1) == [padded]
    tagged = {**collate_flat(ROWS), "pair_ids": torch.tensor([0, 0, 1])}  # e.g. tied examples
    assert split_flat(tagged, 1) == [tagged]
