"""The loop end to end on a tiny model: logs, results, evaluation, checkpoints."""

import json
import math
import re

import pytest
from train_helpers import build_loop, make_config, make_rows

from tunery.errors import ConfigError
from tunery.train.checkpoint import list_checkpoints

LF_FIELDS = {"current_steps", "total_steps", "loss", "lr", "epoch", "percentage", "elapsed_time",
             "remaining_time", "tokens_per_second"}


def read_log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]


def test_training_writes_llamafactory_style_logs_and_results(tmp_path):
    out = tmp_path / "out"
    config = make_config(out, max_steps=6, logging_steps=2, plot_loss=True, learning_rate=1e-2,
                         per_device_train_batch_size=4, report_to="tensorboard")
    metrics = build_loop(config, make_rows(12)).run()
    log = read_log(out)
    assert [entry["current_steps"] for entry in log] == [2, 4, 6]
    assert all(set(entry) >= LF_FIELDS for entry in log)
    assert log[-1]["percentage"] == 100.0 and log[0]["total_steps"] == 6
    for entry in log:  # LLaMA-Factory's "0:01:23"
        assert re.fullmatch(r"\d+:\d\d:\d\d", entry["elapsed_time"])
        assert re.fullmatch(r"\d+:\d\d:\d\d", entry["remaining_time"])
    assert log[-1]["epoch"] == 2.0  # 12 rows / 4 per step = 3 steps per epoch
    assert log[-1]["loss"] < log[0]["loss"]
    results = json.loads((out / "all_results.json").read_text())
    for key in ("train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second",
                "train_tokens_per_second", "epoch"):
        assert key in results and key in metrics
    assert results["epoch"] == 2.0
    assert json.loads((out / "train_results.json").read_text())["train_loss"] == metrics["train_loss"]
    assert (out / "training_loss.png").stat().st_size > 0
    assert list((out / "runs").glob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-6"]  # a final checkpoint, as transformers


def test_epochs_set_the_step_count_unless_max_steps_does(tmp_path):
    rows = make_rows(10)
    by_epochs = build_loop(make_config(tmp_path / "a", num_train_epochs=2.5, per_device_train_batch_size=2,
                                       gradient_accumulation_steps=2), rows)
    assert by_epochs.state.steps_per_epoch == 3 and by_epochs.state.total_steps == 8
    by_steps = build_loop(make_config(tmp_path / "b", num_train_epochs=2.5, max_steps=4), rows)
    assert by_steps.state.total_steps == 4


def test_evaluation_logs_eval_loss_and_perplexity(tmp_path):
    out = tmp_path / "out"
    config = make_config(out, max_steps=4, eval_strategy="steps", eval_steps=2, val_size=0.1, do_eval=True,
                         logging_steps=4)
    metrics = build_loop(config, make_rows(8), eval_rows=make_rows(5, seed=9)).run()
    eval_lines = [entry for entry in read_log(out) if "eval_loss" in entry]
    assert [entry["current_steps"] for entry in eval_lines] == [2, 4]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-3)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_loss"] == metrics["eval_loss"] and "train_loss" in results
    assert (out / "eval_results.json").is_file()


def test_eval_steps_defaults_to_logging_steps(tmp_path):
    out = tmp_path / "out"
    config = make_config(out, max_steps=4, eval_strategy="steps", val_size=0.1, do_eval=True,
                         logging_steps=2, save_steps=3)
    build_loop(config, make_rows(8), eval_rows=make_rows(5, seed=9)).train()
    eval_lines = [entry for entry in read_log(out) if "eval_loss" in entry]
    assert [entry["current_steps"] for entry in eval_lines] == [2, 4]


def test_eval_loss_is_the_mean_over_all_label_tokens(tmp_path):
    eval_rows = make_rows(5, seed=2)
    loop = build_loop(make_config(tmp_path / "out", per_device_eval_batch_size=2), make_rows(4), eval_rows)
    one_by_one = [build_loop(make_config(tmp_path / f"e{i}"), make_rows(4), [row]).evaluate()
                  for i, row in enumerate(eval_rows)]
    tokens = [sum(1 for label in row["labels"][1:] if label != -100) for row in eval_rows]
    expected = sum(r["eval_loss"] * n for r, n in zip(one_by_one, tokens, strict=True)) / sum(tokens)
    assert loop.evaluate()["eval_loss"] == pytest.approx(expected, abs=1e-5)


def test_save_total_limit_keeps_the_newest_checkpoints(tmp_path):
    out = tmp_path / "out"
    build_loop(make_config(out, max_steps=5, save_steps=1, save_total_limit=2), make_rows(8)).train()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-5"]
    checkpoint = out / "checkpoint-5"
    for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt",
                 "rng_state_0.pth", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 5 and state["data_position"]["samples_seen"] == 5
    assert not list(out.glob(".tmp-*"))


def test_refuses_an_output_dir_holding_a_previous_run(tmp_path):
    out = tmp_path / "out"
    build_loop(make_config(out, max_steps=1), make_rows(4)).train()
    with pytest.raises(ConfigError, match="overwrite_output_dir"):
        build_loop(make_config(out, max_steps=1), make_rows(4)).train()
    build_loop(make_config(out, max_steps=2, overwrite_output_dir=True), make_rows(4)).train()
    assert [entry["current_steps"] for entry in read_log(out)] == [1, 2]


def test_resume_true_without_checkpoints_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        build_loop(make_config(tmp_path / "out", resume_from_checkpoint=True), make_rows(4)).train()


def test_empty_training_data_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        build_loop(make_config(tmp_path / "out"), []).train()
