"""The web UI's forms without Gradio: config keys as typed fields, widget values as a flat config.

Every input that sets a config key is described by a ``FieldSpec`` read from the
schema (``tunery.config.schema``): its kind (checkbox, choice, number, text),
default, choices and description, so a field added to the schema gets a widget
without UI code. Keys Tunery knows from LLaMA-Factory but does not implement yet
(``use_badam``, ``deepspeed``, ...) get a disabled text field that says so, and
become real widgets the day they move into the schema.

``form_to_flat`` turns widget values into the flat key/value mapping the CLI
reads; ``flat_to_form`` goes the other way (Load arguments); ``validate`` and
``check_training_form`` check a form before anything starts and report problems
in the page's language (``FormError``).
"""

import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tunery.config.load import KEY_OWNER, build_config
from tunery.config.schema import SECTIONS, RunConfig
from tunery.config.unsupported import UNSUPPORTED_KEYS, UNSUPPORTED_VALUES
from tunery.errors import TuneryError
from tunery.webui import lookup, t

Kind = Literal["bool", "choice", "int", "float", "list", "text", "yaml"]
OMIT = object()  # a widget left empty: the key is not set, so the config's default applies

COMPUTE_TYPE = "compute_type"  # one widget for the two precision keys
COMPUTE_TYPES: dict[str, dict[str, bool]] = {
    "fp32": {"bf16": False, "fp16": False},
    "bf16": {"bf16": True, "fp16": False},
    "fp16": {"bf16": False, "fp16": True},
}

# Where the Train tab shows keys; every other key of the training sections is "advanced".
TOP_BAR_KEYS = ("model_name_or_path", "finetuning_type", "adapter_name_or_path", "quantization_bit",
                "template")
TRAIN_BASIC_KEYS = (
    "learning_rate", "num_train_epochs", "max_steps", "max_samples", "cutoff_len",
    "per_device_train_batch_size", "gradient_accumulation_steps", "val_size", "lr_scheduler_type",
    "warmup_ratio", "max_grad_norm", "logging_steps", "save_steps",
)
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "additional_target",
             "loraplus_lr_ratio", "use_rslora", "use_dora", "pissa_init")
FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")
# Preference / RL settings: every training key with one of these prefixes (so keys added for a new
# stage land here by themselves).
PREFERENCE_PREFIXES = ("pref_", "dpo_", "simpo_", "orpo_", "kto_", "ref_model", "reward_model", "ppo_",
                       "grpo_")
DATA_KEYS = ("stage", "dataset_dir", "dataset")
# Keys the Train tab sets itself (or that a training job never changes).
TRAIN_FIXED_KEYS = ("output_dir", "bf16", "fp16", "do_train", "streaming")
# Sections that belong to the other tabs; every other section (new ones too) is training's.
NON_TRAINING_SECTIONS = ("generation", "inference", "evaluation", "export")
LIST_WIDGETS = ("dataset", "eval_dataset", "adapter_name_or_path")  # multi-select dropdowns
# Where the Train tab starts when it differs from the library's defaults (as LLaMA-Factory's board):
# LoRA-sized learning rate, small batches, frequent logging so the loss curve fills in, a loss plot.
TRAIN_UI_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
    "cutoff_len": 1024, "logging_steps": 5, "save_steps": 100, "plot_loss": True,
}


class FormError(TuneryError):
    """A form that cannot run, described in the page's language."""


@dataclass(frozen=True)
class FieldSpec:
    """One config key as a form field."""

    key: str
    kind: Kind
    default: Any
    optional: bool = False  # None is a valid value: an empty widget means "not set"
    choices: tuple = ()
    description: str = ""
    supported: bool = True  # False: known from LLaMA-Factory, not built yet (a disabled placeholder)
    reason: str = ""  # the feature that is missing, for the placeholder's hint


# ----- schema -> field specs ----------------------------------------------------------------------


def schema_field(key: str):
    return SECTIONS[KEY_OWNER[key]].model_fields[key]


def field_kind(annotation: Any) -> tuple[Kind, bool, tuple]:
    """(kind, optional, choices) of a pydantic annotation such as ``int | None`` or ``Literal[...]``."""
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if is_union and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        inner = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007 (built at runtime)
        kind, _, choices = field_kind(inner)
        if kind == "bool":  # three states (unset, true, false) do not fit a checkbox
            return "choice", True, ("true", "false")
        return kind, True, choices
    if annotation is bool:
        return "bool", False, ()
    if typing.get_origin(annotation) is Literal:
        return "choice", False, tuple(str(arg) for arg in args)
    if annotation is int:
        return "int", False, ()
    if annotation is float:
        return "float", False, ()
    if annotation is str:
        return "text", False, ()
    if typing.get_origin(annotation) is list:
        return "list", False, ()
    return "yaml", False, ()  # dicts and unions such as str | bool: written as YAML, as on the CLI


def field_spec(key: str) -> FieldSpec:
    """The field of config key ``key``; a placeholder for a key that is not supported yet."""
    if key in KEY_OWNER:
        field = schema_field(key)
        kind, optional, choices = field_kind(field.annotation)
        default = field.get_default(call_default_factory=True)
        return FieldSpec(key, kind, default, optional or default is None, choices, field.description or "")
    if key in UNSUPPORTED_KEYS:
        return FieldSpec(key, "text", None, True, (), supported=False, reason=UNSUPPORTED_KEYS[key])
    raise KeyError(f"'{key}' is not a config key")


def supported_values(key: str) -> list[str]:
    """The values of a choice key that Tunery runs today (schema choices minus "not supported yet")."""
    return [value for value in field_spec(key).choices if (key, value) not in UNSUPPORTED_VALUES]


def training_keys() -> list[str]:
    """Every config key of the training sections, in schema order."""
    return [key for section, model in SECTIONS.items() if section not in NON_TRAINING_SECTIONS
            for key in model.model_fields]


def preference_keys() -> list[str]:
    """The preference / RL accordion: the schema's keys with a preference or RL prefix."""
    return [key for key in training_keys() if key.startswith(PREFERENCE_PREFIXES)]


def advanced_keys() -> list[str]:
    """Training keys no other part of the page shows: the generated "advanced" form."""
    placed = {*TOP_BAR_KEYS, *TRAIN_BASIC_KEYS, *LORA_KEYS, *FREEZE_KEYS, *preference_keys(), *DATA_KEYS,
              *TRAIN_FIXED_KEYS, "eval_dataset"}
    return [key for key in training_keys() if key not in placed]


def section_keys(section: str, skip: Iterable[str] = ()) -> list[str]:
    return [key for key in SECTIONS[section].model_fields if key not in set(skip)]


# ----- labels -------------------------------------------------------------------------------------


def field_label(key: str, lang: str) -> str:
    """A localized name where the locale has one (``field.<key>``), else the config key itself."""
    return lookup(f"field.{key}", lang) or lookup(f"field.{key}", "en") or key


def field_info(spec: FieldSpec, lang: str) -> str:
    """The hint under a widget: the locale's translation, else the schema's description; the key."""
    if not spec.supported:
        return t("form.not_supported", lang, name=spec.key, feature=spec.reason)
    text = lookup(f"info.{spec.key}", lang) or spec.description
    return f"{text} ({spec.key})" if text else spec.key


# ----- widget values <-> config values ------------------------------------------------------------


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget shows it (lists comma separated, None as empty)."""
    if spec.kind == "bool":
        return bool(value)
    if spec.key in LIST_WIDGETS:
        return list(value or [])
    if value is None:
        return None if spec.kind == "int" and not spec.optional else ""
    if spec.kind == "list":
        return ", ".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if spec.kind == "yaml" and not isinstance(value, str):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if spec.kind in ("choice", "text", "float") or spec.optional:
        return str(value)
    return value


def from_widget(spec: FieldSpec, value: Any) -> Any:
    """A widget's value as the config value (``OMIT`` for an empty optional widget).

    An empty required field becomes None, so the library names the key in its error.
    """
    if spec.kind == "bool":
        return bool(value)
    if isinstance(value, list):  # multi-select dropdowns
        return value if value or not spec.optional else OMIT
    if value is None or (isinstance(value, str) and not value.strip()):
        return OMIT if spec.optional else None
    if spec.kind == "int":
        number = parse_number(value)
        return int(number) if isinstance(number, float) and number.is_integer() else number
    if spec.kind == "float":
        return parse_number(value)
    if spec.kind == "yaml":
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value.strip() if isinstance(value, str) and spec.kind in ("choice", "list") else value


def parse_number(value: Any) -> Any:
    """``"5e-5"`` -> 5e-05; text that is not a number stays text, for the library to name."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def form_to_flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """Widget values by config key (plus ``compute_type``) -> the flat config they describe."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key == COMPUTE_TYPE:
            flat.update(COMPUTE_TYPES.get(value or "fp32", COMPUTE_TYPES["fp32"]))
            continue
        spec = field_spec(key)
        if not spec.supported:
            continue
        converted = from_widget(spec, value)
        if converted is not OMIT:
            flat[key] = converted
    return flat


def flat_to_form(flat: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Widget values for ``keys`` from a flat config (keys it lacks get their defaults)."""
    values: dict[str, Any] = {}
    for key in keys:
        if key == COMPUTE_TYPE:
            values[key] = compute_type_of(flat)
            continue
        spec = field_spec(key)
        values[key] = to_widget(spec, flat.get(key, spec.default))
    return values


def compute_type_of(flat: Mapping[str, Any]) -> str:
    return "bf16" if flat.get("bf16") else "fp16" if flat.get("fp16") else "fp32"


def carried_keys(flat: Mapping[str, Any], shown: Iterable[str]) -> dict[str, Any]:
    """Keys of a loaded config that no widget shows and that differ from their defaults.

    They are kept and sent with the form, so a loaded file runs as written.
    """
    shown = set(shown) | set(COMPUTE_TYPES["fp32"])
    return {key: value for key, value in flat.items()
            if key not in shown and key in KEY_OWNER and value != field_spec(key).default}


# ----- validation --------------------------------------------------------------------------------


def validate(flat: Mapping[str, Any], lang: str) -> RunConfig:
    """The RunConfig of ``flat``; the library's message behind a localized prefix when invalid."""
    try:
        return build_config(flat, t("form.source", lang))
    except TuneryError as err:
        raise FormError(t("error.invalid", lang, message=str(err))) from None


def check_paths(flat: Mapping[str, Any], lang: str) -> None:
    """Model and adapter paths must exist here (built-in aliases need no path)."""
    from tunery.model.aliases import find_alias

    model = str(flat.get("model_name_or_path") or "").strip()
    if not model:
        raise FormError(t("error.no_model", lang))
    if find_alias(model) is None and not Path(model).expanduser().exists():
        raise FormError(t("error.bad_model", lang, path=model))
    for adapter in flat.get("adapter_name_or_path") or []:
        if not Path(adapter).expanduser().is_dir():
            raise FormError(t("error.bad_adapter", lang, path=adapter))


def check_datasets(names: list[str], dataset_dir: str, stage: str, lang: str) -> None:
    """At least one dataset, the folder exists, and every dataset suits the stage."""
    from tunery.webui.choices import dataset_kinds, stage_accepts

    if not names:
        raise FormError(t("error.no_dataset", lang))
    if dataset_dir != "builtin" and not Path(dataset_dir).is_dir():
        raise FormError(t("error.no_dataset_dir", lang, path=dataset_dir))
    kinds = dataset_kinds(dataset_dir)
    for name in names:
        kind = kinds.get(name)
        if kind is not None and not stage_accepts(stage, kind):
            raise FormError(t("error.dataset_stage", lang, name=name, stage=stage,
                              kind=t(f"kind.{kind}", lang)))


def check_training_form(flat: Mapping[str, Any], lang: str) -> RunConfig:
    """Everything a training run needs, checked before anything starts."""
    from tunery.train.checkpoint import check_output_dir

    check_paths(flat, lang)
    check_datasets(list(flat.get("dataset") or []), str(flat.get("dataset_dir", "data")),
                   str(flat.get("stage", "sft")), lang)
    if not str(flat.get("output_dir") or "").strip():
        raise FormError(t("error.no_output_dir", lang))
    config = validate(flat, lang)
    try:
        check_output_dir(config.training, resuming=bool(config.training.resume_from_checkpoint))
    except TuneryError as err:
        folder = config.training.output_dir
        message = t("error.output_dir_used", lang, path=folder) if Path(folder).is_dir() else \
            t("error.invalid", lang, message=str(err))  # e.g. the path names a file
        raise FormError(message) from None
    return config
