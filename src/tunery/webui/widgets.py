"""Gradio building blocks shared by the tabs: schema-driven widgets, forms, and the page's texts.

``Localizer`` remembers every text on the page by its locale key, so the
language selector switches all labels, buttons and hints at once. ``Form``
maps config keys to the widgets that set them; callbacks take a form's widgets
as a set of inputs and read their values by key. ``field_widget`` builds the
widget of one config key from its ``FieldSpec`` (see ``forms``).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from tunery.webui import t
from tunery.webui.forms import FieldSpec, field_info, field_label, field_spec, to_widget
from tunery.webui.runner import JobRegistry

Text = str | Callable[[str], str]  # a locale key, or a function of the language
DEFAULT = object()


class Localizer:
    """Components and the locale keys of their texts (label, info, value, placeholder)."""

    def __init__(self):
        self.entries: list[tuple[gr.components.Component | gr.blocks.BlockContext, dict[str, Text]]] = []

    def add(self, component, **texts: Text):
        self.entries.append((component, texts))
        return component

    @property
    def components(self) -> list:
        return [component for component, _ in self.entries]

    def updates(self, lang: str) -> list[dict]:
        return [gr.update(**{prop: text(lang) if callable(text) else t(text, lang)
                             for prop, text in texts.items()})
                for _, texts in self.entries]


@dataclass
class Form:
    """Config keys -> the widgets that set them (one form per tab)."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, component):
        self.fields[key] = component
        return component

    @property
    def components(self) -> list:
        return list(self.fields.values())

    def values(self, data: dict) -> dict[str, Any]:
        """Widget values by key, from the dict Gradio passes when the inputs are a set."""
        return {key: data[component] for key, component in self.fields.items() if component in data}


@dataclass
class Page:
    """What every tab needs: the language selector, the texts, the top bar's form, the jobs."""

    lang: gr.Dropdown
    localizer: Localizer
    top: Form
    registry: JobRegistry
    initial_lang: str = "en"

    def text(self, component, **texts: Text):
        """Register ``component``'s texts and return it."""
        return self.localizer.add(component, **texts)

    def button(self, key: str, elem_id: str, **kwargs) -> gr.Button:
        return self.text(gr.Button(t(key, self.initial_lang), elem_id=elem_id, **kwargs), value=key)

    def markdown(self, key: str, **kwargs) -> gr.Markdown:
        return self.text(gr.Markdown(t(key, self.initial_lang), **kwargs), value=key)


def elem_id(prefix: str, key: str) -> str:
    return f"tunery-{prefix}-{key.replace('_', '-')}"


def field_widget(page: Page, form: Form, key: str, value: Any = DEFAULT, choices: Iterable | None = None,
                 **kwargs):
    """The widget of config key ``key`` in ``form``: its kind, default and texts from the schema.

    A key Tunery does not support yet is shown disabled, with a hint saying so.
    """
    spec = field_spec(key)
    lang = page.initial_lang
    options = dict(label=field_label(key, lang), info=field_info(spec, lang), elem_id=elem_id(form.name, key),
                   interactive=spec.supported)
    options.update(kwargs)
    shown = to_widget(spec, spec.default) if value is DEFAULT else value
    component = make_component(spec, shown, choices, options)
    page.text(component, label=lambda lang: field_label(key, lang), info=lambda lang: field_info(spec, lang))
    return form.add(key, component)


def make_component(spec: FieldSpec, value: Any, choices: Iterable | None, options: dict):
    if spec.kind == "bool":
        return gr.Checkbox(value=value, **options)
    if spec.kind == "choice" or choices is not None:
        listed = list(choices) if choices is not None else [*([""] if spec.optional else []), *spec.choices]
        return gr.Dropdown(listed, value=value, **options)
    if spec.kind == "int" and not spec.optional:  # an empty Number reads as 0: optional ints are text boxes
        return gr.Number(value=value, precision=0, **options)
    return gr.Textbox(value=value, lines=1, max_lines=4, **options)
