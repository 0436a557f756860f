"""The Export tab: merge the top bar's model and picked adapter into one folder (``export_model``).

The widgets are generated from the schema's export section (shard size,
device, legacy format, GGUF) plus ``infer_dtype``; the export runs in the
page's worker thread and the tab lists the files it wrote and where.
"""

from collections.abc import Iterator
from typing import Any

import gradio as gr

from tunery.errors import TuneryError
from tunery.webui import t
from tunery.webui.choices import default_output_dir
from tunery.webui.forms import FormError, check_paths, form_to_flat, section_keys, validate
from tunery.webui.preview import shown_path
from tunery.webui.topbar import top_flat
from tunery.webui.widgets import Form, Page, field_widget


def build_export_tab(page: Page) -> Form:
    form, lang = Form("export"), page.initial_lang
    model, method = page.top.fields["model_name_or_path"], page.top.fields["finetuning_type"]
    with gr.Tab(t("tab.export", lang), id="export") as tab:
        page.text(tab, label="tab.export")
        with gr.Row():
            field_widget(page, form, "export_dir", value=default_output_dir(model.value, "lora", "export-"),
                         scale=3)
            field_widget(page, form, "infer_dtype")
        with gr.Row():
            for key in section_keys("export", skip=["export_dir"]):
                field_widget(page, form, key)
        start = page.button("export.start", "tunery-export-start", variant="primary")
        status = gr.Markdown(elem_id="tunery-export-status")
    inputs = {page.lang, *page.top.components, *form.components}
    start.click(lambda data: run_export(page, form, data), inputs, status)
    for source in (model, method):
        source.change(lambda m, f: default_output_dir(m, f, "export-"), [model, method],
                      form.fields["export_dir"])
    return form


def run_export(page: Page, form: Form, data: dict[str, Any]) -> Iterator[str]:
    """Check the form, say that the export runs, export, then say where the files went."""
    from tunery.export import export_model

    lang = data[page.lang]
    flat = {**top_flat(page.top.values(data)), **form_to_flat(form.values(data)), "do_train": False}
    try:
        check_paths(flat, lang)
        if not str(flat.get("export_dir") or "").strip():
            raise FormError(t("export.no_dir", lang))
        config = validate(flat, lang)
    except FormError as err:
        yield f"✗ {err}"
        return
    yield t("export.running", lang, path=config.export.export_dir)
    try:
        result = export_model(config)
    except TuneryError as err:
        yield "✗ " + t("error.invalid", lang, message=str(err))
        return
    files = ", ".join(f"`{name}`" for name in result.files)
    folder = shown_path(result.folder)
    yield f"✓ {t('export.done', lang, path=folder, files=files)}\n\n{t('export.ollama', lang, path=folder)}"
