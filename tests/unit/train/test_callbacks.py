"""Log lines, the loss plot and results files."""

import json

from tunery.train.callbacks import (
    TrainerLog,
    build_log_entry,
    format_duration,
    plot_metric,
    save_results,
    smooth,
)


def test_durations_are_formatted_like_llamafactory():
    assert format_duration(83.7) == "0:01:23"
    assert format_duration(3 * 3600 + 5) == "3:00:05"


def test_log_entry_has_eta_from_the_session_pace():
    entry = build_log_entry(step=10, total_steps=40, epoch=0.5, elapsed=20.0, steps_done=5,
                            values={"loss": 1.5, "lr": 1e-4, "tokens_per_second": 99.0, "grad_norm": None})
    assert entry == {"current_steps": 10, "total_steps": 40, "loss": 1.5, "lr": 1e-4, "epoch": 0.5,
                     "percentage": 25.0, "elapsed_time": "0:00:20", "remaining_time": "0:02:00",
                     "tokens_per_second": 99.0}


def test_resuming_drops_log_lines_after_the_checkpoint(tmp_path):
    log = TrainerLog(tmp_path)
    for step in range(1, 6):
        log.write({"current_steps": step, "loss": float(step)})
    TrainerLog(tmp_path, resume_step=3)
    assert [entry["current_steps"] for entry in log.entries()] == [1, 2, 3]


def test_smoothing_keeps_the_first_value_and_damps_jumps():
    values = [1.0, 5.0, 1.0, 5.0]
    smoothed = smooth(values)
    assert smoothed[0] == 1.0 and max(smoothed) < 5.0 and len(smoothed) == 4
    assert smooth([]) == []


def test_plot_is_written_only_when_the_metric_was_logged(tmp_path):
    entries = [{"current_steps": step, "loss": 3.0 - step / 10} for step in range(1, 11)]
    path = plot_metric(tmp_path, entries, "loss")
    assert path.name == "training_loss.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert plot_metric(tmp_path, entries, "eval_loss") is None


def test_results_merge_into_all_results(tmp_path):
    save_results(tmp_path, "train", {"train_loss": 1.0})
    save_results(tmp_path, "eval", {"eval_loss": 2.0})
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"train_loss": 1.0, "eval_loss": 2.0}
    assert json.loads((tmp_path / "eval_results.json").read_text()) == {"eval_loss": 2.0}
