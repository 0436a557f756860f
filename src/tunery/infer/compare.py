"""``tunery compare``: the same prediction for the base model and the fine-tuned one, in one report.

The fine-tuned model is the config as written (its adapters, or a fully tuned
``model_name_or_path``); the base is the same config without adapters, or the
model named by ``--base``. Each model is loaded, predicts every example of
``eval_dataset``, and is unloaded before the next, so memory holds one model at
a time. The report folder (``output_dir``) receives:

- ``compare_report.md`` and ``compare_report.html`` (self-contained: the loss
  curve is embedded): both metric sets side by side with the change, the
  training loss curve when the run's ``trainer_log.jsonl`` is found, and the
  first few examples with the question, reference, and both answers;
- ``base_predictions.jsonl`` and ``tuned_predictions.jsonl``;
- ``compare_results.json`` with both metric sets.
"""

import base64
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tunery.config import RunConfig
from tunery.errors import ConfigError
from tunery.fileio import write_text_atomic
from tunery.infer.engine import create_engine
from tunery.infer.predict import PredictionRun, predict
from tunery.train.callbacks import LOG_FILE, plot_metric

logger = logging.getLogger(__name__)

SCORE_NAMES = {"predict_rouge-1": "ROUGE-1", "predict_rouge-2": "ROUGE-2", "predict_rouge-l": "ROUGE-L",
               "predict_bleu-4": "BLEU-4", "predict_samples_per_second": "samples/s"}
LOSS_IMAGE = "training_loss.png"


@dataclass
class Comparison:
    base_name: str
    tuned_name: str
    base: PredictionRun
    tuned: PredictionRun
    loss_image: Path | None


def base_config(config: RunConfig, base_model: str | None) -> RunConfig:
    """The config of the model before fine-tuning."""
    if not config.model.adapter_name_or_path and not base_model:
        raise ConfigError(
            "Nothing to compare: the config names no adapter (adapter_name_or_path). For a fully "
            "fine-tuned model, name the model it started from with --base."
        )
    update = {"adapter_name_or_path": None}
    if base_model:
        update["model_name_or_path"] = base_model
    return config.model_copy(update={"model": config.model.model_copy(update=update)})


def describe_model(config: RunConfig) -> str:
    adapters = config.model.adapter_name_or_path or []
    return " + ".join([config.model.model_name_or_path, *adapters])


def predict_with(config: RunConfig) -> PredictionRun:
    """Load, predict, unload: one model in memory at a time."""
    with create_engine(config) as engine:
        return predict(config, engine)


def find_training_log(config: RunConfig, run_dir: str | None) -> Path | None:
    """The fine-tuning run's trainer_log.jsonl: --run, else the last adapter's or the model's folder."""
    candidates = [run_dir] if run_dir else [*(config.model.adapter_name_or_path or [])[-1:],
                                            config.model.model_name_or_path]
    for folder in candidates:
        if folder and (Path(folder) / LOG_FILE).is_file():
            return Path(folder) / LOG_FILE
    return None


def compare(config: RunConfig, base_model: str | None = None, run_dir: str | None = None) -> Comparison:
    """Predict with both models and draw the loss curve into ``output_dir``."""
    before = base_config(config, base_model)
    out = Path(config.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = find_training_log(config, run_dir)
    if run_dir and log is None:
        raise ConfigError(f"--run {run_dir}: no {LOG_FILE} there; point it at the training output_dir.")
    loss_image = None
    if log is not None:
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        loss_image = plot_metric(out, entries, "loss")
    base = predict_with(before)
    tuned = predict_with(config)
    return Comparison(describe_model(before), describe_model(config), base, tuned, loss_image)


def score_rows(comparison: Comparison) -> list[tuple[str, float, float, float]]:
    """(metric, base, tuned, change) for every reported score."""
    rows = []
    for key, name in SCORE_NAMES.items():
        base, tuned = comparison.base.metrics.get(key), comparison.tuned.metrics.get(key)
        if base is not None and tuned is not None:
            rows.append((name, base, tuned, tuned - base))
    return rows


def example_rows(comparison: Comparison, count: int) -> list[dict[str, str]]:
    base, tuned = comparison.base, comparison.tuned
    return [
        {"question": base.questions[i], "label": base.labels[i], "base": base.predictions[i],
         "tuned": tuned.predictions[i]}
        for i in range(min(count, len(base.predictions)))
    ]


def markdown_report(comparison: Comparison, examples: int) -> str:
    lines = ["# Before and after fine-tuning", "",
             f"- base: `{comparison.base_name}`", f"- fine-tuned: `{comparison.tuned_name}`",
             f"- examples: {comparison.base.metrics['predict_samples']}", "",
             "| metric | base | fine-tuned | change |", "|---|---|---|---|"]
    lines += [f"| {name} | {base:.2f} | {tuned:.2f} | {change:+.2f} |"
              for name, base, tuned, change in score_rows(comparison)]
    if comparison.loss_image:
        lines += ["", "## Training loss", "", f"![training loss]({comparison.loss_image.name})"]
    lines += ["", "## Examples"]
    for number, row in enumerate(example_rows(comparison, examples), start=1):
        lines += ["", f"### Example {number}", "", "**Question**", "", quote(row["question"]),
                  "", "**Reference**", "", quote(row["label"]), "", "**Base**", "", quote(row["base"]),
                  "", "**Fine-tuned**", "", quote(row["tuned"])]
    return "\n".join(lines) + "\n"


def quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in (text or "(empty)").splitlines())


def html_report(comparison: Comparison, examples: int) -> str:
    esc = html.escape
    scores = "".join(
        f"<tr><td>{esc(name)}</td><td>{base:.2f}</td><td>{tuned:.2f}</td><td>{change:+.2f}</td></tr>"
        for name, base, tuned, change in score_rows(comparison)
    )
    loss = ""
    if comparison.loss_image:
        encoded = base64.b64encode(comparison.loss_image.read_bytes()).decode()
        loss = f'<h2>Training loss</h2><img alt="training loss" src="data:image/png;base64,{encoded}">'
    cards = "".join(
        f"<h3>Example {number}</h3><table class=ex>"
        + "".join(f"<tr><th>{title}</th><td><pre>{esc(row[key])}</pre></td></tr>"
                  for title, key in (("Question", "question"), ("Reference", "label"),
                                     ("Base", "base"), ("Fine-tuned", "tuned")))
        + "</table>"
        for number, row in enumerate(example_rows(comparison, examples), start=1)
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Before and after fine-tuning</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
pre{{white-space:pre-wrap;margin:0}}</style></head><body>
<h1>Before and after fine-tuning</h1>
<p>base: <code>{esc(comparison.base_name)}</code><br>fine-tuned: <code>{esc(comparison.tuned_name)}</code><br>
examples: {comparison.base.metrics['predict_samples']}</p>
<table><tr><th>metric</th><th>base</th><th>fine-tuned</th><th>change</th></tr>{scores}</table>
{loss}<h2>Examples</h2>{cards}
</body></html>
"""


def predictions_jsonl(run: PredictionRun) -> str:
    return "".join(
        json.dumps({"prompt": p, "predict": y, "label": t}, ensure_ascii=False) + "\n"
        for p, y, t in zip(run.prompts, run.predictions, run.labels, strict=True)
    )


def save_report(comparison: Comparison, output_dir: str | Path, examples: int = 5) -> Path:
    """Write both reports, both prediction files and the metrics; returns the HTML report's path."""
    out = Path(output_dir)
    write_text_atomic(out / "base_predictions.jsonl", predictions_jsonl(comparison.base))
    write_text_atomic(out / "tuned_predictions.jsonl", predictions_jsonl(comparison.tuned))
    results = {"base": comparison.base.metrics, "tuned": comparison.tuned.metrics}
    write_text_atomic(out / "compare_results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "compare_report.md", markdown_report(comparison, examples))
    write_text_atomic(out / "compare_report.html", html_report(comparison, examples))
    return out / "compare_report.html"
