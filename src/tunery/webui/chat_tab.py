"""The Chat tab: load the top bar's model (with the picked run), chat with it, unload it.

The chat itself is the reusable component (``chat.build_chat``), handed the
model that is loaded now. One model is loaded at a time for the whole server
(``ModelSlot``): loading another, or Unload, closes the previous engine, which
frees its weights. Without a picked run the chat is with the original model.
"""

import threading
from typing import Any

import gradio as gr

from tunery.errors import TuneryError
from tunery.infer.engine import ChatEngine, create_engine, model_label
from tunery.webui import t
from tunery.webui.chat import ChatComponents, ChatDefaults, build_chat
from tunery.webui.forms import FormError, check_paths, form_to_flat, validate
from tunery.webui.topbar import top_flat
from tunery.webui.widgets import Form, Page, field_widget

# The chat component's texts, by attribute and property, for the language selector.
CHAT_TEXTS = {
    "chatbot": {"label": "chat.chatbot"}, "message": {"placeholder": "chat.message_placeholder"},
    "send": {"value": "chat.send"}, "stop": {"value": "chat.stop"}, "clear": {"value": "chat.clear"},
    "system": {"label": "chat.system"}, "tools": {"label": "chat.tools", "info": "chat.tools_info"},
    "max_new_tokens": {"label": "chat.max_new_tokens"},
    "temperature": {"label": "chat.temperature", "info": "chat.temperature_info"},
    "top_p": {"label": "chat.top_p"}, "top_k": {"label": "chat.top_k"},
    "settings": {"label": "chat.settings"},
}


class ModelSlot:
    """The one model the Chat tab serves (None until loaded)."""

    def __init__(self):
        self.engine: ChatEngine | None = None
        self.description = ""
        self.lock = threading.Lock()

    def current(self) -> ChatEngine | None:
        return self.engine

    def load(self, config) -> ChatEngine:
        """Load ``config``'s model and adapters, closing the model loaded before (first, to free memory)."""
        with self.lock:
            self.release()
            self.engine = create_engine(config)
            adapters = config.model.adapter_name_or_path or []
            self.description = " + ".join([config.model.model_name_or_path, *adapters]) or model_label(config)
            return self.engine

    def unload(self) -> bool:
        with self.lock:
            return self.release()

    def release(self) -> bool:
        engine, self.engine, self.description = self.engine, None, ""
        if engine is None:
            return False
        engine.close()  # drops the weights and returns the memory (GPU cache too)
        return True


def build_chat_tab(page: Page, app: gr.Blocks, slot: ModelSlot) -> tuple[Form, ChatComponents]:
    form, lang = Form("chat"), page.initial_lang
    with gr.Tab(t("tab.chat", lang), id="chat") as tab:
        page.text(tab, label="tab.chat")
        with gr.Row():
            field_widget(page, form, "infer_dtype", scale=1)
            with gr.Column(scale=0, min_width=160):
                load = page.button("chat.load", "tunery-chat-load", variant="primary")
                unload = page.button("chat.unload", "tunery-chat-unload")
            status = page.text(gr.Markdown(slot_status(slot, lang), elem_id="tunery-chat-status"),
                               value=lambda chosen: slot_status(slot, chosen))
        chat = build_chat(slot.current, ChatDefaults(), lang, "tunery-chat", language=page.lang)
    for name, texts in CHAT_TEXTS.items():
        page.text(getattr(chat, name), **texts)
    inputs = {page.lang, *page.top.components, *form.components}
    load.click(lambda data: load_model(slot, page, form, data), inputs, [status, chat.system],
               show_progress="full")
    unload.click(lambda lang: unload_model(slot, lang), page.lang, status)
    app.load(lambda lang: slot_status(slot, lang), page.lang, status)
    return form, chat


def load_model(slot: ModelSlot, page: Page, form: Form, data: dict[str, Any]):
    """Load the top bar's model; the system prompt box starts at its template's default."""
    lang = data[page.lang]
    flat = {**top_flat(page.top.values(data)), **form_to_flat(form.values(data)), "do_train": False}
    try:
        check_paths(flat, lang)
        engine = slot.load(validate(flat, lang))
    except FormError as err:
        return f"✗ {err}", gr.update()
    except TuneryError as err:
        return "✗ " + t("error.invalid", lang, message=str(err)), gr.update()
    return slot_status(slot, lang), engine.template.default_system or ""


def unload_model(slot: ModelSlot, lang: str) -> str:
    slot.unload()
    return slot_status(slot, lang)


def slot_status(slot: ModelSlot, lang: str) -> str:
    if slot.engine is None:
        return t("chat.unloaded", lang)
    return "✓ " + t("chat.loaded", lang, name=slot.description)
