"""HTML the web UI shows without Gradio: the data preview, the progress bar, prediction results.

The data preview is `tunery data check` drawn for a browser: the first
examples rendered with the chat template, learned tokens (what the loss is
computed on) highlighted against the prompt tokens, with token counts, plus
how many rows each dataset gave and how long the examples are.
"""

import html
import json
from pathlib import Path

from tunery.config.schema import RunConfig
from tunery.webui import t
from tunery.webui.runner import JobState, Progress

PREVIEW_ROWS = 256  # rows per dataset the preview tokenizes at most, so a large dataset previews quickly
PREVIEW_EXAMPLES = 3
LEARNED_STYLE = "background:#c8f7c5;color:#0b3d0b"
PROMPT_STYLE = "background:#eceff1;color:#455a64"


def preview_config(config: RunConfig) -> RunConfig:
    """The config the preview prepares: at most ``PREVIEW_ROWS`` rows per dataset."""
    limit = min(config.data.max_samples or PREVIEW_ROWS, PREVIEW_ROWS)
    data = config.data.model_copy(update={"max_samples": limit})
    return config.model_copy(update={"data": data})


def preview_data(config: RunConfig, lang: str) -> str:
    """The data preview of ``config`` as HTML (loads the tokenizer and prepares up to 256 rows)."""
    from tunery.data.check import check_data
    from tunery.train.run import load_tokenizer_and_template, template_name

    config = preview_config(config)
    tokenizer, template = load_tokenizer_and_template(config)
    report = check_data(config, tokenizer, template, num_examples=PREVIEW_EXAMPLES)
    return render_report(report, template_name(config), lang)


def render_report(report, template: str, lang: str) -> str:
    """The data report (``tunery data check``'s) as HTML: counts, lengths, then the examples."""
    data = report.data
    summary = t("preview.summary", lang, stage=data.stage, cutoff=data.cutoff_len, template=template)
    parts = [f"<div id='tunery-preview-summary'><b>{esc(summary)}</b>"]
    for item in data.datasets:
        parts.append("<br>" + esc(t("preview.dataset", lang, name=item.name, valid=item.valid,
                                    skipped=item.skipped, rows=item.rows)))
        parts += [f"<br><small>{esc(reason)}</small>" for reason in item.reasons[:3]]
    if data.lengths:
        lengths = ", ".join(f"{key} {value}" for key, value in data.lengths.items())
        parts.append("<br>" + esc(t("preview.lengths", lang, lengths=lengths, truncated=data.truncated,
                                    cutoff=data.cutoff_len)))
    if report.nothing_learned:
        parts.append(f"<br><b style='color:#b71c1c'>{esc(t('preview.nothing_learned', lang, count=report.nothing_learned))}</b>")  # noqa: E501
    parts.append("</div>" + legend(lang))
    for number, example in enumerate(report.examples, start=1):
        parts.append(render_example(number, example, lang))
    return "".join(parts)


def legend(lang: str) -> str:
    return (f"<p><span style='{PROMPT_STYLE};padding:0 4px'>{esc(t('preview.prompt_tokens', lang))}</span> "
            f"<span style='{LEARNED_STYLE};padding:0 4px'>{esc(t('preview.learned_tokens', lang))}</span>"
            "</p>")


def render_example(number: int, example, lang: str) -> str:
    """One example: its counts, then its text with learned and prompt segments in two colours."""
    counts = t("preview.example", lang, number=number, tokens=example.num_tokens, learned=example.num_learned,
               prompt=example.num_tokens - example.num_learned)
    spans = "".join(
        f"<span class='{'tunery-learned' if learned else 'tunery-prompt'}' "
        f"style='{LEARNED_STYLE if learned else PROMPT_STYLE}'>{esc(text)}</span>"
        for text, learned in example.segments
    )
    return (f"<div class='tunery-example'><b>{esc(counts)}</b>"
            f"<pre style='white-space:pre-wrap;word-break:break-word;font-size:0.85em'>{spans}</pre></div>")


def esc(text: object) -> str:
    return html.escape(str(text))


# ----- job progress -------------------------------------------------------------------------------


def progress_bar(progress: Progress, state: JobState | None, lang: str) -> str:
    """The training progress bar: step, percentage, elapsed and remaining time, and the job's state."""
    if state is None:
        return f"<div id='tunery-progress' data-state='idle'>{esc(t('progress.idle', lang))}</div>"
    percentage = 100.0 if state.state == "finished" else progress.percentage
    if progress.total:
        text = t("progress.text", lang, step=progress.step, total=progress.total,
                 percentage=f"{percentage:.0f}", elapsed=progress.elapsed or "0:00:00",
                 remaining=progress.remaining or "?")
    else:
        text = t("progress.loading", lang)
    label = t(f"state.{state.state}", lang)
    colour = {"failed": "#e53935", "aborted": "#fb8c00"}.get(state.state, "#43a047")
    return (
        f"<div id='tunery-progress' data-state='{state.state}' data-percentage='{percentage:.0f}'>"
        f"<div style='display:flex;justify-content:space-between'><span>{esc(text)}</span>"
        f"<b class='tunery-state'>{esc(label)}</b></div>"
        f"<div style='background:#e0e0e0;border-radius:4px;height:14px;overflow:hidden'>"
        f"<div style='width:{min(percentage, 100):.1f}%;height:100%;background:{colour}'></div></div></div>"
    )


# ----- prediction results -------------------------------------------------------------------------


METRIC_NAMES = {"predict_rouge-1": "ROUGE-1", "predict_rouge-2": "ROUGE-2", "predict_rouge-l": "ROUGE-L",
                "predict_bleu-4": "BLEU-4"}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_predictions(path: Path, limit: int) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) >= limit:
                    break
    except (OSError, json.JSONDecodeError):
        pass
    return rows


def metrics_table(output_dir: str | Path, lang: str) -> str:
    """Markdown: ROUGE/BLEU of a prediction, or base / fine-tuned / change of a comparison."""
    folder = Path(output_dir)
    compared = read_json(folder / "compare_results.json")
    if compared:
        base, tuned = compared.get("base", {}), compared.get("tuned", {})
        rows = [f"| {t('eval.metric', lang)} | {t('eval.base', lang)} | {t('eval.tuned', lang)} | "
                f"{t('eval.change', lang)} |", "|---|---|---|---|"]
        rows += [f"| {name} | {base[key]:.2f} | {tuned[key]:.2f} | {tuned[key] - base[key]:+.2f} |"
                 for key, name in METRIC_NAMES.items() if key in base and key in tuned]
        return "\n".join(rows)
    metrics = read_json(folder / "predict_results.json")
    if not metrics:
        return ""
    rows = [f"| {t('eval.metric', lang)} | {t('eval.score', lang)} |", "|---|---|"]
    rows += [f"| {name} | {metrics[key]:.2f} |" for key, name in METRIC_NAMES.items() if key in metrics]
    if "predict_samples" in metrics:
        rows.append(f"| {t('eval.samples', lang)} | {metrics['predict_samples']} |")
    return "\n".join(rows)


def example_rows(output_dir: str | Path, limit: int = 5) -> list[list[str]]:
    """[prompt, reference, prediction(, base prediction)] for the first examples."""
    folder = Path(output_dir)
    tuned = read_predictions(folder / "tuned_predictions.jsonl", limit)
    if tuned:
        base = read_predictions(folder / "base_predictions.jsonl", limit)
        return [[row["prompt"], row["label"], row["predict"], other["predict"]]
                for row, other in zip(tuned, base, strict=False)]
    return [[row["prompt"], row["label"], row["predict"]]
            for row in read_predictions(folder / "generated_predictions.jsonl", limit)]


# ----- a job's state in words ---------------------------------------------------------------------


def shown_path(path: str | Path) -> str:
    """A path relative to the working directory when it lies inside it (as the user typed it)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def job_status(state: JobState | None, output_dir: str | Path, lang: str, detail: str = "") -> str:
    """One Markdown line: the job's state, where its results go, and a failed job's error."""
    if state is None:
        return ""
    icon = {"running": "…", "finished": "✓", "failed": "✗", "aborted": "■"}.get(state.state, "")
    text = f"{icon} **{t(f'state.{state.state}', lang)}** · `{shown_path(output_dir)}`"
    if state.state == "failed":
        reason = state.error or t("state.no_error_line", lang, code=state.returncode)
        text += "\n\n" + t("state.failed_because", lang, error=reason)
    if detail:
        text += "\n\n" + detail
    return text
