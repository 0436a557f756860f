"""The Evaluate & Predict tab: `tunery predict` (or `tunery compare`) on a dataset, with its scores.

The model is the top bar's (with the picked run). Start writes the config to
``<output_dir>/predict_args.yaml`` and runs ``tunery predict`` as a separate
process (``tunery compare`` when "compare with the base model" is ticked: the
same prediction without the adapter, or with the original model for a fully
fine-tuned run); when it ends, the tab shows ROUGE-1/2/L and BLEU-4 (base,
fine-tuned and the change for a comparison) and the first predictions.
"""

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tunery.config.load import config_as_yaml
from tunery.webui import t
from tunery.webui.choices import dataset_choices, default_dataset_dir, default_output_dir, split_picked
from tunery.webui.forms import (
    FormError,
    check_datasets,
    check_paths,
    field_spec,
    form_to_flat,
    to_widget,
    validate,
)
from tunery.webui.preview import example_rows, job_status, metrics_table, shown_path
from tunery.webui.runner import abort_latest, job_state, log_tail, start_job
from tunery.webui.topbar import top_flat
from tunery.webui.widgets import Form, Page, field_widget

KINDS = ("predict", "compare")
CONFIG_NAME = "predict_args.yaml"
LOG_NAME = "predict.log"
COMPARE = "compare_with_base"  # not a config key: it picks `tunery compare` over `tunery predict`
# Where the tab starts (a quick look, not a full benchmark run).
EVAL_UI_DEFAULTS = {"max_samples": 20, "cutoff_len": 1024, "per_device_eval_batch_size": 4,
                    "max_new_tokens": 128}
PROMPT_CHARS = 240
EVAL_KEYS = (("dataset_dir", "eval_dataset", "max_samples", "cutoff_len"),
             ("per_device_eval_batch_size", "max_new_tokens", "temperature", "top_p"))


def build_eval_tab(page: Page, app: gr.Blocks) -> Form:
    form, lang = Form("eval"), page.initial_lang
    with gr.Tab(t("tab.eval", lang), id="eval") as tab:
        page.text(tab, label="tab.eval")
        directory = default_dataset_dir()
        for row in EVAL_KEYS:
            with gr.Row():
                for key in row:
                    add_field(page, form, key, directory)
        with gr.Row(equal_height=True):
            model = page.top.fields["model_name_or_path"]
            field_widget(page, form, "output_dir", value=default_output_dir(model.value, "lora", "eval-"),
                         scale=3)
            compare = gr.Checkbox(False, label=t("eval.compare", lang), info=t("eval.compare_info", lang),
                                  elem_id="tunery-eval-compare", scale=2)
            page.text(compare, label="eval.compare", info="eval.compare_info")
        with gr.Row():
            start = page.button("eval.start", "tunery-eval-start", variant="primary")
            abort = page.button("eval.abort", "tunery-eval-abort", variant="stop")
        status = gr.Markdown(elem_id="tunery-eval-status")
        command = page.text(gr.Textbox(label=t("train.command", lang), interactive=False,
                                       elem_id="tunery-eval-command"), label="train.command")
        log = page.text(gr.Textbox(label=t("train.log", lang), lines=6, max_lines=6, autoscroll=True,
                                   interactive=False, elem_id="tunery-eval-log"), label="train.log")
        metrics = gr.Markdown(elem_id="tunery-eval-metrics")
        examples = page.text(gr.Dataframe(label=t("eval.examples", lang), wrap=True, interactive=False,
                                          elem_id="tunery-eval-examples"), label="eval.examples")
        timer = gr.Timer(1.0, active=False)
        shown = gr.State(None)  # what the widgets show now, so unchanged ticks send nothing
    actions = EvalActions(page, form, compare)
    start.click(actions.start, actions.inputs, [status, command, timer, form.fields["output_dir"], shown])
    abort.click(actions.abort, page.lang, status)
    watched = [status, log, metrics, examples, timer, shown]
    timer.tick(actions.refresh, [page.lang, shown], watched, show_progress="hidden")
    for event in (app.load, page.lang.change):  # a new page, or a new language, draws everything
        event(actions.redraw, page.lang, watched)
    directory_box, datasets = form.fields["dataset_dir"], form.fields["eval_dataset"]
    for event in (directory_box.blur, directory_box.submit):
        event(lambda d, picked: update_datasets(d, picked), [directory_box, datasets], datasets)
    method = page.top.fields["finetuning_type"]
    for source in (model, method):
        source.change(lambda m, f: default_output_dir(m, f, "eval-"), [model, method],
                      form.fields["output_dir"])
    return form


def add_field(page: Page, form: Form, key: str, directory: str) -> None:
    if key == "eval_dataset":
        field_widget(page, form, key, value=[], choices=dataset_choices(directory, "sft"), multiselect=True,
                     scale=2)
    elif key == "dataset_dir":
        field_widget(page, form, key, value=directory)
    elif key in EVAL_UI_DEFAULTS:
        field_widget(page, form, key, value=to_widget(field_spec(key), EVAL_UI_DEFAULTS[key]))
    else:
        field_widget(page, form, key)


def update_datasets(directory: str, picked: list[str]):
    choices = dataset_choices(directory or "builtin", "sft")  # prediction needs prompts with answers
    return gr.update(choices=choices, value=[name for name in picked or [] if name in choices])


class EvalActions:
    def __init__(self, page: Page, form: Form, compare: gr.Checkbox):
        self.page, self.form, self.compare = page, form, compare
        self.inputs = {page.lang, compare, *page.top.components, *form.components}

    def flat(self, data: dict) -> dict[str, Any]:
        values = form_to_flat(self.form.values(data))
        sampling = float(values.get("temperature") or 0) > 0  # temperature 0 means greedy decoding
        return {**top_flat(self.page.top.values(data)), **values, "do_train": False, "do_predict": True,
                "do_sample": sampling}

    def command(self, data: dict, path: Path, lang: str) -> list[str]:
        """``predict CONFIG``, or ``compare CONFIG [--base MODEL]`` against the model before fine-tuning."""
        if not data[self.compare]:
            return ["predict", str(path)]
        top = self.page.top.values(data)
        base = str(top.get("model_name_or_path") or "").strip()
        model, adapters = split_picked(base, list(top.get("adapter_name_or_path") or []))
        if model != base:
            return ["compare", str(path), "--base", base]
        if not adapters:
            raise FormError(t("eval.compare_needs_run", lang))
        return ["compare", str(path)]

    def start(self, data: dict):
        lang, registry = data[self.page.lang], self.page.registry
        unchanged = (gr.update(), gr.Timer(active=False), gr.update())
        running = registry.latest(KINDS)
        if running is not None and job_state(registry, running).running:
            return "✗ " + t("eval.already_running", lang), gr.update(), gr.Timer(active=True), gr.update(), \
                gr.update()
        try:
            flat = self.flat(data)
            check_paths(flat, lang)
            check_datasets(list(flat.get("eval_dataset") or []), str(flat.get("dataset_dir")), "sft", lang)
            if not str(flat.get("output_dir") or "").strip():
                raise FormError(t("error.no_output_dir", lang))
            config = validate(flat, lang)
            output_dir = Path(config.training.output_dir)
            args = self.command(data, output_dir / CONFIG_NAME, lang)
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / CONFIG_NAME).write_text(config_as_yaml(config), encoding="utf-8")
        except (FormError, OSError) as err:
            return f"✗ {err}", *unchanged, gr.update()
        start_job(registry, args[0], args, output_dir / CONFIG_NAME, output_dir.resolve(),
                  (output_dir / LOG_NAME).resolve())
        top = self.page.top.values(data)
        fresh = default_output_dir(str(top.get("model_name_or_path") or ""),
                                   str(top.get("finetuning_type") or "lora"), "eval-")
        return (t("eval.started", lang, path=output_dir), "tunery " + " ".join(args), gr.Timer(active=True),
                fresh, None)

    def abort(self, lang: str) -> str:
        stopping = abort_latest(self.page.registry, KINDS)
        return t("train.aborting" if stopping else "train.nothing_to_abort", lang)

    def redraw(self, lang: str):
        return self.refresh(lang, None)

    def refresh(self, lang: str, shown: tuple | None):
        """State and log of the latest prediction; its scores and examples once it has finished."""
        registry = self.page.registry
        job = registry.latest(KINDS)
        if job is None:
            return "", "", "", examples_frame([], lang), gr.Timer(active=False), None
        state = job_state(registry, job)
        log = log_tail(job.log_path, 12)
        now = (job.id, state.state, log)
        if now == shown:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=state.running), shown
        finished = state.state == "finished"
        metrics = metrics_table(job.output_dir, lang) if finished else ""
        rows = example_rows(job.output_dir) if finished else []
        detail = t("eval.report", lang, path=shown_path(Path(job.output_dir) / "compare_report.html")) \
            if finished and job.kind == "compare" else ""
        return (job_status(state, job.output_dir, lang, detail), log, metrics, examples_frame(rows, lang),
                gr.Timer(active=state.running), now)


def examples_frame(rows: list[list[str]], lang: str):
    """The first examples as a table; a prompt keeps its end (the question, then the assistant header)."""
    headers = [t("eval.prompt", lang), t("eval.reference", lang), t("eval.prediction", lang)]
    if rows and len(rows[0]) == 4:
        headers.append(t("eval.base_prediction", lang))
    shown = [[prompt_end(row[0]), *row[1:]] for row in rows]
    widths = ["34%", "22%", "22%", "22%"] if len(headers) == 4 else ["40%", "30%", "30%"]
    return gr.Dataframe(pd.DataFrame(shown, columns=headers), column_widths=widths)


def prompt_end(prompt: str, limit: int = PROMPT_CHARS) -> str:
    return prompt if len(prompt) <= limit else "…" + prompt[-limit:]
