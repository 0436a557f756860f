"""What a run reports: progress bar, trainer_log.jsonl, TensorBoard, the loss plot, results files.

``trainer_log.jsonl`` has LLaMA-Factory's fields (current_steps, total_steps,
loss, lr, epoch, percentage, elapsed_time, remaining_time, ...) so tools that
read LLaMA-Factory logs, and Tunery's web UI, read ours. Everything here runs
on the main process only; other processes get an inert ``Reporter``.
"""

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tunery.errors import ConfigError
from tunery.fileio import write_text_atomic

LOG_FILE = "trainer_log.jsonl"
POSTFIX_KEYS = ("reward/mean", "kl")  # logged values the progress bar shows besides the loss


def format_duration(seconds: float) -> str:
    """``83.7`` -> ``"0:01:23"``, as LLaMA-Factory formats elapsed and remaining time."""
    return str(timedelta(seconds=int(max(seconds, 0))))


def build_log_entry(
    step: int, total_steps: int, epoch: float, elapsed: float, steps_done: int, values: dict[str, Any]
) -> dict[str, Any]:
    """One trainer_log.jsonl line; ``steps_done`` is the steps taken in this session (for the ETA)."""
    per_step = elapsed / steps_done if steps_done else 0.0
    entry = {
        "current_steps": step,
        "total_steps": total_steps,
        **{key: value for key, value in values.items() if key in ("loss", "eval_loss")},
        "lr": values.get("lr"),
        "epoch": round(epoch, 2),
        "percentage": round(step / total_steps * 100, 2) if total_steps else 100.0,
        "elapsed_time": format_duration(elapsed),
        "remaining_time": format_duration(per_step * (total_steps - step)),
        **{key: value for key, value in values.items() if key not in ("loss", "eval_loss", "lr")},
    }
    return {key: value for key, value in entry.items() if value is not None}


class TrainerLog:
    """Appends entries to ``output_dir/trainer_log.jsonl``."""

    def __init__(self, output_dir: str | Path, resume_step: int | None = None):
        self.path = Path(output_dir) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.truncate_after(resume_step)

    def truncate_after(self, step: int) -> None:
        """Drop lines a killed run wrote after the checkpoint we resume from."""
        if not self.path.is_file():
            return
        kept = [
            line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("current_steps", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class TensorBoardLogger:
    """Scalars under ``logging_dir`` (default ``output_dir/runs``)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "report_to: tensorboard needs the tensorboard package; install it with "
                "`pip install 'tunery[metrics]'` or set report_to: none."
            ) from None

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, entry: dict[str, Any]) -> None:
        step = entry["current_steps"]
        names = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
                 "tokens_per_second": "train/tokens_per_second", "eval_loss": "eval/loss",
                 "perplexity": "eval/perplexity", "epoch": "train/epoch"}
        for key, tag in names.items():
            if isinstance(entry.get(key), int | float):
                self.writer.add_scalar(tag, entry[key], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Reporter:
    """Progress bar plus every log sink; inert (``enabled=False``) on non-main processes."""

    def __init__(self, output_dir: str | Path, total_steps: int, start_step: int, enabled: bool,
                 resuming: bool = False, tensorboard_dir: str | Path | None = None):
        self.enabled = enabled
        self.log = TrainerLog(output_dir, start_step if resuming else None) if enabled else None
        self.tensorboard = TensorBoardLogger(tensorboard_dir) if enabled and tensorboard_dir else None
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled, desc="train",
                        dynamic_ncols=True)

    def advance(self, loss: float | None = None, values: dict[str, Any] | None = None) -> None:
        """One step done; ``values`` (the step's log entry) adds RL stages' reward and KL to the bar."""
        self.bar.update(1)
        if loss is not None:
            shown = {key: f"{values[key]:.4g}" for key in POSTFIX_KEYS if key in (values or {})}
            self.bar.set_postfix(loss=f"{loss:.4f}", **shown, refresh=False)

    def write(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.log.write(entry)
        if self.tensorboard:
            self.tensorboard.write(entry)

    def close(self) -> None:
        self.bar.close()
        if self.tensorboard:
            self.tensorboard.close()


def smooth(values: list[float]) -> list[float]:
    """Exponential moving average whose weight grows with the curve length (as LLaMA-Factory)."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def plot_metric(output_dir: str | Path, entries: list[dict[str, Any]], key: str = "loss") -> Path | None:
    """Save ``training_<key>.png`` (raw and smoothed curve); None when nothing was logged."""
    points = [(entry["current_steps"], entry[key]) for entry in entries if key in entry]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    steps, values = zip(*points, strict=True)
    figure = plt.figure()
    plt.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
    plt.plot(steps, smooth(list(values)), color="#1f77b4", label="smoothed")
    plt.title(f"training {key} of {output_dir}")
    plt.xlabel("step")
    plt.ylabel(key)
    plt.legend()
    path = Path(output_dir) / f"training_{key}.png"
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path


def save_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_results(output_dir: str | Path, split: str, metrics: dict[str, Any]) -> None:
    """``<split>_results.json`` and the merged ``all_results.json``, as transformers' save_metrics."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_json_atomic(folder / f"{split}_results.json", metrics)
    combined_path = folder / "all_results.json"
    combined = json.loads(combined_path.read_text()) if combined_path.is_file() else {}
    combined.update(metrics)
    save_json_atomic(combined_path, combined)
