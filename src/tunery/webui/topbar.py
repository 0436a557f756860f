"""The top bar: language, model, method, saved runs (adapters/checkpoints), quantization, template, device.

Every tab reads the model its jobs use from here (``top_flat``). Changing the
model picks its chat template and lists the runs saved for it under
``saves/<model>/``; picking a run that holds an adapter loads the adapter, one
that holds a full model replaces the base model.
"""

from typing import Any

import gradio as gr

from tunery.webui import LANGUAGES, t
from tunery.webui.choices import (
    device_summary,
    list_runs,
    method_choices,
    model_choices,
    split_picked,
    template_choices,
    template_for,
)
from tunery.webui.forms import form_to_flat
from tunery.webui.runner import JobRegistry
from tunery.webui.widgets import Form, Localizer, Page, field_widget


def build_top_bar(lang: str, registry: JobRegistry) -> Page:
    """Lay out the top bar and return the page context every tab builds on."""
    localizer = Localizer()
    gr.Markdown("# Tunery")
    with gr.Row(equal_height=True):
        language = gr.Dropdown([(t("app.language_name", code), code) for code in LANGUAGES], value=lang,
                               label=t("top.lang", lang), elem_id="tunery-lang", scale=1, min_width=120)
        localizer.add(language, label="top.lang")
        page = Page(language, localizer, Form("top"), registry, lang)
        models = model_choices()
        model = field_widget(page, page.top, "model_name_or_path", value=models[0] if models else "",
                             choices=models, allow_custom_value=True, scale=3)
        field_widget(page, page.top, "finetuning_type", value="lora", choices=method_choices(), scale=1)
        field_widget(page, page.top, "template", value=template_for(model.value), choices=template_choices(),
                     scale=1)
        field_widget(page, page.top, "quantization_bit", scale=1)
    with gr.Row():
        adapters = field_widget(page, page.top, "adapter_name_or_path", value=[],
                                choices=list_runs(model.value), multiselect=True, allow_custom_value=True,
                                scale=4)
        with gr.Column(scale=0, min_width=140):
            refresh = page.button("top.refresh", "tunery-top-refresh")
        summary = device_summary()
        page.text(gr.Markdown(f"**{t('top.device', lang)}**: {summary}", elem_id="tunery-device"),
                  value=lambda chosen: f"**{t('top.device', chosen)}**: {summary}")
    model.change(on_model_change, model, [page.top.fields["template"], adapters])
    refresh.click(refresh_runs, [model, adapters], adapters)
    return page


def on_model_change(model: str):
    """A new model: its own chat template, and the runs saved for it."""
    return gr.update(value=template_for(model)), gr.update(choices=list_runs(model), value=[])


def refresh_runs(model: str, picked: list[str]):
    runs = list_runs(model)
    known = {path for _, path in runs}
    return gr.update(choices=runs, value=[path for path in picked or [] if path in known])


def top_flat(values: dict[str, Any]) -> dict[str, Any]:
    """The top bar's widget values as config keys (picked runs become adapters or the model)."""
    model, adapters = split_picked(str(values.get("model_name_or_path") or "").strip(),
                                   list(values.get("adapter_name_or_path") or []))
    return form_to_flat({**values, "model_name_or_path": model, "adapter_name_or_path": adapters})
