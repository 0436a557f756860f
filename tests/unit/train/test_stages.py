"""The stage registry and the pt/sft stages (the preference stages: test_preference_stages.py)."""

import pytest
import torch
from train_helpers import make_config, make_rows, tiny_model

from tunery.errors import TuneryError
from tunery.train.stages import STAGES, get_stage


def test_every_stage_is_registered_and_misses_list_them(tmp_path):
    config = make_config(tmp_path)
    for name in ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo"):
        assert get_stage(name, config).name == name
    with pytest.raises(TuneryError, match=r"Did you mean 'sft'.*Known: dpo, grpo, kto, ppo, pt, rm, sft"):
        STAGES.get("sfft")


def test_counted_label_tokens_match_the_loss_and_padding_is_not_counted(tmp_path):
    stage = get_stage("sft", make_config(tmp_path))
    rows = make_rows(3)
    batch = stage.collate(rows)
    assert batch["input_ids"].shape[0] == 1  # flattened: no padding at all
    assert stage.count_input_tokens(batch) == sum(len(row["input_ids"]) for row in rows)
    loss_sum, n_tokens = stage.compute_loss(tiny_model(), batch)
    # the first label of every example is dropped: it would be predicted from the previous example
    expected = sum(sum(1 for label in row["labels"][1:] if label != -100) for row in rows)
    assert int(n_tokens) == stage.count_loss_tokens(batch) == expected
    assert loss_sum.ndim == 0 and torch.isfinite(loss_sum)
