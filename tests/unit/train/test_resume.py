"""A run interrupted after a checkpoint and resumed ends exactly where an uninterrupted run does."""

import json

import pytest
import torch
from train_helpers import build_loop, make_config, make_rows, trainable_state

from tunery.errors import ConfigError
from tunery.train.stages.sft import SupervisedStage


class Interrupted(Exception):
    pass


class CrashingStage(SupervisedStage):
    """Dies right after optimizer step ``crash_at`` (a stand-in for SIGKILL)."""

    crash_at = 5

    def on_step_end(self, loop) -> None:
        if loop.state.global_step == self.crash_at:
            raise Interrupted


KEYS = {"max_steps": 7, "save_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
        "lora_dropout": 0.2, "learning_rate": 5e-3, "lr_scheduler_type": "cosine", "warmup_steps": 2,
        "max_grad_norm": 1.0}


def read_losses(output_dir) -> list[tuple[int, float]]:
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [(entry["current_steps"], entry["loss"]) for entry in map(json.loads, lines)]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    rows = make_rows(12)  # 3 optimizer steps per epoch: the run crosses two epoch boundaries
    straight = build_loop(make_config(tmp_path / "a", **KEYS), rows)
    straight_metrics = straight.train()

    crashing = build_loop(make_config(tmp_path / "b", **KEYS), rows)
    crashing.stage = crashing.module.stage = CrashingStage(crashing.config)
    with pytest.raises(Interrupted):
        crashing.train()
    resumed_config = make_config(tmp_path / "b", resume_from_checkpoint=True, **KEYS)
    resumed = build_loop(resumed_config, rows, adapter_seed=1)  # fresh LoRA init: the checkpoint must win
    resumed_metrics = resumed.train()

    expected, found = trainable_state(straight), trainable_state(resumed)
    assert set(expected) == set(found)
    for name, value in expected.items():
        assert torch.equal(found[name], value), name
    # lines the crashed run wrote after checkpoint-4 were dropped, the rest continue the curve
    assert read_losses(tmp_path / "b") == read_losses(tmp_path / "a")
    assert resumed_metrics["train_loss"] == pytest.approx(straight_metrics["train_loss"], abs=1e-9)


def test_resume_from_a_named_checkpoint_and_refuse_changed_batch_geometry(tmp_path):
    rows = make_rows(12)
    build_loop(make_config(tmp_path / "a", **KEYS), rows).train()
    checkpoint = tmp_path / "a" / "checkpoint-4"
    loop = build_loop(make_config(tmp_path / "a", resume_from_checkpoint=str(checkpoint), **KEYS), rows)
    loop.restore(checkpoint)
    assert loop.state.global_step == 4
    changed = {**KEYS, "per_device_train_batch_size": 4}
    other = build_loop(make_config(tmp_path / "a", resume_from_checkpoint=str(checkpoint), **changed), rows)
    with pytest.raises(ConfigError, match="global_batch_size"):
        other.restore(checkpoint)


def test_resume_refuses_a_changed_seed_or_changed_data(tmp_path):
    rows = make_rows(12)
    build_loop(make_config(tmp_path / "a", **KEYS), rows).train()
    checkpoint = tmp_path / "a" / "checkpoint-4"
    reseeded = build_loop(make_config(tmp_path / "a", **{**KEYS, "seed": 1}), rows)
    with pytest.raises(ConfigError, match="seed"):
        reseeded.restore(checkpoint)
    other_rows = [*rows[:-1], {"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]  # same count, other data
    with pytest.raises(ConfigError, match="data_fingerprint"):
        build_loop(make_config(tmp_path / "a", **KEYS), other_rows).restore(checkpoint)


def test_full_finetuning_checkpoint_restores_every_weight(tmp_path):
    rows = make_rows(8)
    keys = {"finetuning_type": "full", "max_steps": 2, "save_steps": 2}
    trained = build_loop(make_config(tmp_path / "a", **keys), rows)
    trained.train()
    fresh = build_loop(make_config(tmp_path / "a", resume_from_checkpoint=True, **keys), rows, seed=3)
    fresh.restore(tmp_path / "a" / "checkpoint-2")
    expected, found = trainable_state(trained), trainable_state(fresh)
    assert all(torch.equal(found[name], value) for name, value in expected.items())
    assert fresh.state.global_step == 2
