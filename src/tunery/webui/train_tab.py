"""The Train tab: data, hyperparameters, the command it runs, and the run's live progress.

The form is the top bar plus this tab's widgets, each one config key (see
``forms``); the advanced accordion is generated from the schema. Preview shows
the exact ``tunery train CONFIG`` command and the YAML Start writes to
``<output_dir>/training_args.yaml``; Start runs that command as a separate
process (``runner``), and a timer redraws its progress bar, loss curve and log
tail from the files it writes, so a reloaded page picks the run up again.
"""

import html
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tunery.config.load import config_as_yaml, read_config_file
from tunery.errors import TuneryError
from tunery.train.callbacks import smooth
from tunery.train.checkpoint import list_checkpoints
from tunery.webui import LANGUAGES, t
from tunery.webui.choices import (
    compute_type_choices,
    dataset_choices,
    default_compute_type,
    default_dataset_dir,
    default_output_dir,
    stage_choices,
)
from tunery.webui.forms import (
    COMPUTE_TYPE,
    FREEZE_KEYS,
    LORA_KEYS,
    TRAIN_BASIC_KEYS,
    TRAIN_UI_DEFAULTS,
    FormError,
    advanced_keys,
    carried_keys,
    check_datasets,
    check_paths,
    check_training_form,
    field_spec,
    flat_to_form,
    form_to_flat,
    preference_keys,
    to_widget,
    validate,
)
from tunery.webui.preview import job_status, preview_data, progress_bar, shown_path
from tunery.webui.runner import Progress, abort_latest, job_state, log_tail, read_progress, start_job
from tunery.webui.topbar import top_flat
from tunery.webui.widgets import DEFAULT, Form, Page, field_widget

KIND = "train"
CONFIG_NAME = "training_args.yaml"
LOG_NAME = "train.log"
PER_ROW = 4
LOG_LINES = 20


def build_train_tab(page: Page, app: gr.Blocks) -> "TrainActions":
    """Lay out the Train tab inside the current ``gr.Tabs`` and wire it; returns its actions (and form)."""
    form, lang = Form("train"), page.initial_lang
    with gr.Tab(t("tab.train", lang), id="train") as tab:
        page.text(tab, label="tab.train")
        carried = gr.State({})  # keys of a loaded config that no widget shows
        shown = gr.State(None)  # what the progress widgets show now, so unchanged ticks send nothing
        preview_button, preview_box, preview = build_data_rows(page, form)
        build_parameters(page, form)
        config_path = build_output_row(page, form)
        with gr.Row():
            buttons = {name: page.button(f"train.{name}", f"tunery-train-{name}", variant=variant)
                       for name, variant in (("preview", "secondary"), ("save", "secondary"),
                                             ("load", "secondary"), ("start", "primary"), ("abort", "stop"))}
        status = gr.Markdown(elem_id="tunery-train-status")
        progress = gr.HTML(progress_bar(Progress(), None, lang), elem_id="tunery-train-progress")
        with gr.Row():
            # no initial data: a plot first drawn from an empty table keeps a broken colour scale
            # titled inside the chart: a block label above it would push the legend out of view
            plot = gr.LinePlot(None, x="step", y="loss", color="curve", color_map=curve_colours(),
                               color_title="", title=t("train.loss", lang), show_label=False,
                               elem_id="tunery-train-loss", height=360)
            page.text(plot, title="train.loss")
            log = page.text(gr.Textbox(label=t("train.log", lang), lines=14, max_lines=14, autoscroll=True,
                                       interactive=False, elem_id="tunery-train-log"), label="train.log")
        command_box, command, yaml_box = build_command_box(page)
        timer = gr.Timer(1.0, active=False)
    actions = TrainActions(page, form, carried, config_path)
    inputs = actions.inputs
    preview_button.click(actions.preview_data, inputs, [preview, preview_box])
    buttons["preview"].click(actions.preview_command, inputs, [status, command, yaml_box, command_box])
    buttons["save"].click(actions.save, inputs, [status, config_path])
    buttons["load"].click(actions.load, inputs, [*page.top.components, *form.components, carried, status])
    started = [status, command, yaml_box, timer, form.fields["output_dir"], shown]
    buttons["start"].click(actions.start, inputs, started)
    buttons["abort"].click(actions.abort, page.lang, status)
    watched = [progress, plot, log, status, timer, shown]
    timer.tick(actions.refresh, [page.lang, shown], watched, show_progress="hidden")
    for event in (app.load, page.lang.change):  # a new page, or a new language, draws everything
        event(actions.redraw, page.lang, watched)
    wire_choices(page, form)
    return actions


def build_data_rows(page: Page, form: Form):
    lang = page.initial_lang
    with gr.Row():
        field_widget(page, form, "stage", value="sft", choices=stage_choices(), scale=1)
        directory = default_dataset_dir()
        field_widget(page, form, "dataset_dir", value=directory, scale=1)
        field_widget(page, form, "dataset", value=[], choices=dataset_choices(directory, "sft"),
                     multiselect=True, scale=3)
        with gr.Column(scale=0, min_width=150):
            button = page.button("train.preview_data", "tunery-train-preview-data")
    box = page.text(gr.Accordion(t("train.data_preview", lang), open=False), label="train.data_preview")
    with box:
        preview = gr.HTML(elem_id="tunery-train-data-preview")
    return button, box, preview


def build_output_row(page: Page, form: Form) -> gr.Textbox:
    lang, model = page.initial_lang, page.top.fields["model_name_or_path"]
    with gr.Row():
        field_widget(page, form, "output_dir", value=default_output_dir(model.value, "lora"), scale=3)
        config_path = gr.Textbox(label=t("train.config_path", lang), info=t("train.config_path_info", lang),
                                 elem_id="tunery-train-config-path", scale=3)
    return page.text(config_path, label="train.config_path", info="train.config_path_info")


def build_command_box(page: Page):
    """The command and YAML Start runs (opened by Preview command)."""
    lang = page.initial_lang
    with page.text(gr.Accordion(t("train.command_box", lang), open=False), label="train.command_box") as box:
        command = page.text(gr.Textbox(label=t("train.command", lang), elem_id="tunery-train-command",
                                       interactive=False, buttons=["copy"]), label="train.command")
        yaml_box = gr.Code(label=t("train.yaml", lang), language="yaml", elem_id="tunery-train-yaml",
                           interactive=False, max_lines=24)
        page.text(yaml_box, label="train.yaml")
    return box, command, yaml_box


def build_parameters(page: Page, form: Form) -> None:
    """The basic rows, then the LoRA / freeze / preference accordions and the generated advanced one."""
    lang = page.initial_lang
    keys = list(TRAIN_BASIC_KEYS)
    with gr.Row():
        compute = gr.Dropdown(compute_type_choices(), value=default_compute_type(),
                              label=t("field.compute_type", lang), info=t("info.compute_type", lang),
                              elem_id="tunery-train-compute-type")
        form.add(COMPUTE_TYPE, page.text(compute, label="field.compute_type", info="info.compute_type"))
        for key in keys[:PER_ROW - 1]:
            add_field(page, form, key)
    for start in range(PER_ROW - 1, len(keys), PER_ROW):
        with gr.Row():
            for key in keys[start:start + PER_ROW]:
                add_field(page, form, key)
    groups = (("train.lora", LORA_KEYS), ("train.freeze", FREEZE_KEYS),
              ("train.preference", preference_keys()), ("train.advanced", advanced_keys()))
    for title, group in groups:
        with page.text(gr.Accordion(t(title, lang), open=False), label=title):
            for start in range(0, len(group), PER_ROW):
                with gr.Row():
                    for key in group[start:start + PER_ROW]:
                        add_field(page, form, key)


def add_field(page: Page, form: Form, key: str) -> None:
    value = to_widget(field_spec(key), TRAIN_UI_DEFAULTS[key]) if key in TRAIN_UI_DEFAULTS else DEFAULT
    field_widget(page, form, key, value=value)


def wire_choices(page: Page, form: Form) -> None:
    """The dataset list follows the stage and folder; a new model or method gets a new output folder."""
    stage, directory, datasets = (form.fields[key] for key in ("stage", "dataset_dir", "dataset"))
    for event in (stage.change, directory.blur, directory.submit):
        event(update_datasets, [directory, stage, datasets], datasets)
    model, method = page.top.fields["model_name_or_path"], page.top.fields["finetuning_type"]
    for event in (model.change, method.change):
        event(lambda m, f: default_output_dir(m, f), [model, method], form.fields["output_dir"])


def update_datasets(directory: str, stage: str, picked: list[str]):
    choices = dataset_choices(directory or "builtin", stage)
    return gr.update(choices=choices, value=[name for name in picked or [] if name in choices])


def curve_colours() -> dict[str, str]:
    """The raw curve light, the smoothed one dark (as training_loss.png draws them), in every language."""
    colours = {}
    for lang in LANGUAGES:
        colours[t("train.curve_raw", lang)] = "#9ecae1"
        colours[t("train.curve_smoothed", lang)] = "#1f77b4"
        colours[t("train.curve_reward", lang)] = "#ff7f0e"
    return colours


def loss_frame(progress: Progress, lang: str) -> pd.DataFrame | None:
    """The loss curve as a long table: one row per logged step, raw and smoothed (None before any);
    PPO and GRPO runs add their mean reward as a third curve."""
    if not progress.losses:
        return None
    steps = [step for step, _ in progress.losses]
    losses = [loss for _, loss in progress.losses]
    raw, smoothed = t("train.curve_raw", lang), t("train.curve_smoothed", lang)
    reward_steps = [step for step, _ in progress.rewards]
    rewards = [reward for _, reward in progress.rewards]
    return pd.DataFrame({"step": steps * 2 + reward_steps, "loss": losses + smooth(losses) + rewards,
                         "curve": [raw] * len(steps) + [smoothed] * len(steps)
                         + [t("train.curve_reward", lang)] * len(reward_steps)})


class TrainActions:
    """The Train tab's callbacks. Each gets the widgets' values as one dict (inputs given as a set)."""

    def __init__(self, page: Page, form: Form, carried: gr.State, config_path: gr.Textbox):
        self.page, self.form, self.carried, self.config_path = page, form, carried, config_path
        self.inputs = {page.lang, carried, config_path, *page.top.components, *form.components}

    def flat(self, data: dict) -> dict[str, Any]:
        """Top bar + this tab (+ keys kept from a loaded file) as one flat config."""
        values = form_to_flat(self.form.values(data))
        return {**data[self.carried], **top_flat(self.page.top.values(data)), **values, "do_train": True}

    def preview_data(self, data: dict):
        """The data preview, opened; a problem with the form or the data is shown in its place."""
        lang, flat = data[self.page.lang], self.flat(data)
        try:
            check_paths(flat, lang)
            check_datasets(list(flat.get("dataset") or []), str(flat.get("dataset_dir")),
                           str(flat.get("stage")), lang)
            shown = preview_data(validate(flat, lang), lang)
        except TuneryError as err:
            shown = f"<p id='tunery-preview-error' style='color:#b71c1c'>✗ {escape(err)}</p>"
        return shown, gr.Accordion(open=True)

    def preview_command(self, data: dict):
        lang = data[self.page.lang]
        try:
            config = check_training_form(self.flat(data), lang)
        except FormError as err:
            return f"✗ {err}", gr.update(), gr.update(), gr.update()
        path = Path(config.training.output_dir) / CONFIG_NAME
        return (t("train.preview_done", lang, path=path), f"tunery train {path}", config_as_yaml(config),
                gr.Accordion(open=True))

    def save(self, data: dict):
        lang = data[self.page.lang]
        try:
            config = validate(self.flat(data), lang)
            path = Path(data[self.config_path].strip() or Path(config.training.output_dir) / CONFIG_NAME)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config_as_yaml(config), encoding="utf-8")
        except (FormError, OSError) as err:
            return f"✗ {err}", gr.update()
        return t("train.saved", lang, path=path), str(path)

    def load(self, data: dict) -> list:
        lang, path = data[self.page.lang], data[self.config_path].strip()
        unchanged = [gr.update()] * (len(self.page.top.fields) + len(self.form.fields) + 1)
        if not path:
            return [*unchanged, "✗ " + t("train.no_config_path", lang)]
        try:
            config = validate(read_config_file(Path(path)), lang)
        except TuneryError as err:
            return [*unchanged, f"✗ {err}"]
        flat = config.to_flat()
        top, own = self.top_updates(flat), self.form_updates(flat)
        carried = carried_keys(flat, [*self.page.top.fields, *self.form.fields])
        note = t("train.loaded", lang, path=path)
        if carried:
            note += " " + t("train.loaded_kept", lang, keys=", ".join(sorted(carried)))
        return [*top, *own, carried, note]

    def top_updates(self, flat: dict) -> list:
        values = flat_to_form(flat, self.page.top.fields)
        updates = []
        for key, value in values.items():
            if key == "adapter_name_or_path":
                updates.append(gr.update(value=value, choices=[*value, *self.page.top.fields[key].choices]))
            elif (key == "template" and not value) or not field_spec(key).supported:
                updates.append(gr.update())  # no template in the file: keep the model's own
            else:
                updates.append(gr.update(value=value))
        return updates

    def form_updates(self, flat: dict) -> list:
        values = flat_to_form(flat, self.form.fields)
        updates = []
        for key, value in values.items():
            if key == "dataset":  # a loaded dataset is offered even if the stage's filter would hide it
                choices = dataset_choices(flat["dataset_dir"], flat["stage"])
                extra = [name for name in value if name not in choices]
                updates.append(gr.update(value=value, choices=[*choices, *extra]))
            elif key == COMPUTE_TYPE or field_spec(key).supported:
                updates.append(gr.update(value=value))
            else:
                updates.append(gr.update())
        return updates

    def start(self, data: dict):
        """Check the form, write the YAML into the output folder, start `tunery train` on it."""
        lang, registry = data[self.page.lang], self.page.registry
        running = registry.latest(KIND)
        if running is not None and job_state(registry, running).running:
            message = t("train.already_running", lang, path=shown_path(running.output_dir))
            return f"✗ {message}", gr.update(), gr.update(), gr.Timer(active=True), gr.update(), gr.update()
        try:
            config = check_training_form(self.flat(data), lang)
            output_dir = Path(config.training.output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            path = output_dir / CONFIG_NAME
            path.write_text(config_as_yaml(config), encoding="utf-8")
        except (FormError, OSError) as err:
            return f"✗ {err}", gr.update(), gr.update(), gr.Timer(active=False), gr.update(), gr.update()
        start_job(registry, KIND, ["train", str(path)], path, output_dir.resolve(),
                  (output_dir / LOG_NAME).resolve())
        return (t("train.started", lang, path=output_dir), f"tunery train {path}", config_as_yaml(config),
                gr.Timer(active=True), next_output_dir(data, self.page, output_dir), None)

    def abort(self, lang: str) -> str:
        stopping = abort_latest(self.page.registry, KIND)
        return t("train.aborting" if stopping else "train.nothing_to_abort", lang)

    def redraw(self, lang: str):
        return self.refresh(lang, None)

    def refresh(self, lang: str, shown: tuple | None):
        """Progress bar, loss curve, log tail and state of the latest run; the timer stops when it ends.

        ``shown`` is what the page shows now: when nothing changed, nothing is sent (no redraw).
        """
        registry = self.page.registry
        job = registry.latest(KIND)
        if job is None:
            return progress_bar(Progress(), None, lang), None, "", "", gr.Timer(active=False), None
        state = job_state(registry, job)
        progress, log = read_progress(job.output_dir), log_tail(job.log_path, LOG_LINES)
        now = (job.id, state.state, progress.step, len(progress.losses), log)
        timer = gr.Timer(active=state.running)
        if now == shown:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), timer, shown
        detail = ""
        if state.state == "aborted":
            checkpoints = list_checkpoints(job.output_dir)
            detail = t("train.checkpoint_kept", lang, path=shown_path(checkpoints[-1])) if checkpoints else ""
        return (progress_bar(progress, state, lang), loss_frame(progress, lang), log,
                job_status(state, job.output_dir, lang, detail), timer, now)


def next_output_dir(data: dict, page: Page, used: Path):
    """After a start, a fresh default folder for the next run (a folder the user typed is kept)."""
    model = str(data[page.top.fields["model_name_or_path"]] or "")
    method = str(data[page.top.fields["finetuning_type"]] or "lora")
    default_parent = Path(default_output_dir(model, method)).parent
    return default_output_dir(model, method) if used.parent == default_parent else gr.update()


def escape(err: Exception) -> str:
    return html.escape(str(err)).replace("\n", "<br>")
