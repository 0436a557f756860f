"""`tunery webui`: the whole fine-tuning workflow in one Gradio page (layout and wiring only).

The top bar picks the model, method, saved run and template; the tabs train
(``train_tab``), predict and compare (``eval_tab``), chat (``chat_tab``) and
export (``export_tab``). The page holds no training logic: it builds a
RunConfig from its widgets (``forms``) and runs `tunery` commands as separate
processes (``runner``) or calls the library. The language selector relabels
every registered text at once.
"""

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tunery.webui import load_strings, t
from tunery.webui.chat_tab import ModelSlot, build_chat_tab
from tunery.webui.eval_tab import build_eval_tab
from tunery.webui.export_tab import build_export_tab
from tunery.webui.runner import JobRegistry
from tunery.webui.topbar import build_top_bar
from tunery.webui.train_tab import TrainActions, build_train_tab
from tunery.webui.widgets import Form, Page

CSS = "#tunery-progress{margin:4px 0} .tunery-example pre{margin:2px 0 10px}"


@dataclass
class WebApp:
    """The page, and what must be released when it stops (the chat's model)."""

    blocks: gr.Blocks
    page: Page
    forms: dict[str, Form]
    models: ModelSlot
    train: TrainActions  # the Train tab's callbacks, for tests and scripts

    def launch(self, **options):
        """Serve the page (``Blocks.launch`` options); no file of this machine's disk is served."""
        return self.blocks.queue().launch(css=CSS, allowed_paths=[], **options)

    def close(self) -> None:
        self.models.unload()
        self.blocks.close()


def create_app(lang: str = "en", jobs_dir: str | Path | None = None) -> WebApp:
    """Build the page in ``lang``; jobs are recorded in ``jobs_dir`` (default ``$TUNERY_HOME/webui``)."""
    load_strings(lang)  # an unknown language is refused before anything is built
    registry, models = JobRegistry(jobs_dir), ModelSlot()
    with gr.Blocks(title=t("app.title", lang), analytics_enabled=False) as blocks:
        page = build_top_bar(lang, registry)
        with gr.Tabs(elem_id="tunery-tabs"):
            train = build_train_tab(page, blocks)
            forms = {"train": train.form, "eval": build_eval_tab(page, blocks)}
            forms["chat"], _ = build_chat_tab(page, blocks, models)
            forms["export"] = build_export_tab(page)
        page.lang.change(page.localizer.updates, page.lang, page.localizer.components, queue=False)
    return WebApp(blocks, page, {"top": page.top, **forms}, models, train)
