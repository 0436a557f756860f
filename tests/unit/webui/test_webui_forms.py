"""The web UI's forms: every widget sets a config key that validates, forms round-trip through YAML,
datasets are filtered per stage, and invalid combinations are refused in the page's language.

The page is built once (no server): its forms map config keys to the real
Gradio widgets, so "every widget" means every widget the page shows.
"""

import json
import os
from pathlib import Path

import gradio as gr
import pytest

from tunery.config import load_config
from tunery.config.load import KEY_OWNER, config_as_yaml
from tunery.config.unsupported import UNSUPPORTED_KEYS, UNSUPPORTED_VALUES
from tunery.webui import t
from tunery.webui.choices import (
    dataset_choices,
    dataset_kind,
    list_runs,
    model_folder_name,
    split_picked,
    stage_accepts,
    stage_choices,
)
from tunery.webui.forms import (
    COMPUTE_TYPE,
    LIST_WIDGETS,
    OMIT,
    FormError,
    advanced_keys,
    carried_keys,
    check_training_form,
    field_spec,
    flat_to_form,
    form_to_flat,
    from_widget,
    to_widget,
    validate,
)

# Values that need a partner key to validate (a cross-field rule), by key.
PARTNERS = {"eval_strategy": {"val_size": 0.1}}
# Keys whose values are restricted beyond their kind.
SAMPLES = {"resume_from_checkpoint": "true", "report_to": "tensorboard", "template": "chatml",
           "reward_weights": "1.0, 0.5", "quantization_bit": "4"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from tunery.webui.app import create_app

    folder = tmp_path_factory.mktemp("webui-forms")
    previous = Path.cwd()
    os.chdir(folder)  # saves/ and data/ are looked up in the working directory
    try:
        yield create_app("en", folder / "jobs")
    finally:
        os.chdir(previous)


def sample_value(key: str):
    """A widget value for ``key`` that differs from the default and is valid on its own."""
    spec = field_spec(key)
    default = to_widget(spec, spec.default)
    if key in SAMPLES:
        return SAMPLES[key]
    if spec.kind == "bool":
        return not default
    if spec.kind == "choice":
        return next(choice for choice in reversed(spec.choices) if choice != default)
    if spec.kind == "int":
        return "3" if spec.optional else default + 3  # optional numbers are text boxes (empty: not set)
    samples = {"float": "0.5", "list": "q_proj, v_proj", "yaml": "{num_cycles: 2}",
               "text": "some/folder"}
    if key in SAMPLES:
        return SAMPLES[key]
    if key in LIST_WIDGETS:  # multi-select dropdowns
        return ["identity", "instruct_demo"]
    return samples[spec.kind]


def test_every_widget_maps_to_a_config_key_that_validates(app):
    checked = 0
    for name, form in app.forms.items():
        for key, component in form.fields.items():
            if key == COMPUTE_TYPE:
                for choice in component.choices:
                    config = validate(form_to_flat({key: choice[1]}), "en")
                    precision = (config.training.bf16, config.training.fp16)
                    assert precision == (choice[1] == "bf16", choice[1] == "fp16")
                continue
            assert key in KEY_OWNER or key in UNSUPPORTED_KEYS, f"{name}: widget for unknown key {key}"
            if key not in KEY_OWNER:  # a placeholder: shown disabled, never sent
                assert component.interactive is False and form_to_flat({key: sample_value(key)}) == {}
                continue
            value = sample_value(key)
            flat = {**PARTNERS.get(key, {}), **form_to_flat({key: value})}
            config = validate(flat, "en")
            assert flat_to_form(config.to_flat(), [key])[key] == normalised(key, value), key
            checked += 1
    assert checked > 80  # the generated advanced form covers the schema, not a handful of keys


def normalised(key: str, value):
    """The value as the widget shows it after a trip through the config (``"0.5"`` stays ``"0.5"``)."""
    spec = field_spec(key)
    return to_widget(spec, from_widget(spec, value)) if spec.kind in ("float", "yaml") else value


def test_the_default_forms_validate_and_the_advanced_form_comes_from_the_schema(app):
    for name in ("top", "train", "eval", "export"):
        values = {key: component.value for key, component in app.forms[name].fields.items()}
        validate(form_to_flat(values), "en")
    advanced = set(advanced_keys())
    assert {"seed", "weight_decay", "packing", "gradient_checkpointing", "max_tokens_per_forward"} <= advanced
    assert advanced <= set(app.forms["train"].fields)
    assert not advanced & {"learning_rate", "lora_rank", "output_dir", "dataset", "bf16", "stage"}


def test_form_to_config_to_yaml_and_back(app, tmp_path):
    form = app.forms["train"]
    values = {key: component.value for key, component in form.fields.items()}
    values.update(dataset=["identity", "instruct_demo"], dataset_dir="builtin", learning_rate="2e-4",
                  max_steps=7, max_samples="16", lora_target="q_proj, v_proj", packing="true",
                  lr_scheduler_type="cosine", lr_scheduler_kwargs="{num_cycles: 2}", compute_type="bf16",
                  resume_from_checkpoint="", output_dir=str(tmp_path / "run"))
    top = {"model_name_or_path": "smollm2-135m-instruct", "finetuning_type": "lora", "template": "smollm2",
           "adapter_name_or_path": []}
    flat = {**form_to_flat(top), **form_to_flat(values)}
    assert flat["learning_rate"] == 2e-4 and flat["max_samples"] == 16 and "adapter_name_or_path" not in flat
    config = validate(flat, "en")
    path = tmp_path / "training_args.yaml"
    path.write_text(config_as_yaml(config))
    again = load_config(path).to_flat()
    assert flat_to_form(again, values) == {**values, "learning_rate": "0.0002", "max_samples": "16"}
    assert flat_to_form(again, top) == {**top, "adapter_name_or_path": []}


def test_optional_widgets_mean_not_set_and_required_ones_are_named_when_empty():
    assert from_widget(field_spec("max_samples"), "") is OMIT
    assert from_widget(field_spec("packing"), "") is OMIT  # unset: on for pt, off for sft
    assert form_to_flat({"packing": "false", "dataset": []}) == {"packing": "false", "dataset": []}
    with pytest.raises(FormError, match="learning_rate"):
        validate(form_to_flat({"learning_rate": ""}), "en")
    with pytest.raises(FormError, match="learning_rate"):
        validate(form_to_flat({"learning_rate": "fast"}), "en")


def test_datasets_are_filtered_by_what_the_stage_trains_on(tmp_path):
    assert dataset_choices("builtin", "pt") == ["text_demo"]
    sft = dataset_choices("builtin", "sft")
    assert {"identity", "instruct_demo", "toolcall_demo"} <= set(sft) and "text_demo" not in sft
    info = {
        "pairs": {"file_name": "p.json", "ranking": True, "columns": {"chosen": "c", "rejected": "r"}},
        "tagged": {"file_name": "k", "formatting": "sharegpt", "columns": {"messages": "m", "kto_tag": "t"}},
        "corpus": {"file_name": "c.txt"},
        "chats": {"file_name": "s.json", "formatting": "sharegpt"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))

    def own(stage: str) -> list[str]:  # the folder's own datasets come first, then the built-in ones
        offered = dataset_choices(str(tmp_path), stage)
        assert offered[:len(set(offered) & set(info))] == [name for name in offered if name in info]
        return [name for name in offered if name in info]

    assert own("dpo") == ["pairs"] == own("rm")
    assert own("kto") == ["tagged"]
    assert dataset_choices(str(tmp_path), "pt") == ["corpus", "text_demo"]
    assert own("sft") == ["chats"]
    assert [dataset_kind(entry) for entry in info.values()] == ["ranking", "kto", "text", "conversation"]
    assert stage_accepts("sft", "conversation") and not stage_accepts("sft", "ranking")


def test_stages_and_methods_are_read_from_the_schema(monkeypatch):
    stages = stage_choices()
    assert {"pt", "sft", "ppo", "grpo"} <= set(stages)
    monkeypatch.setitem(UNSUPPORTED_VALUES, ("stage", "sft"), "a test")
    assert "sft" not in stage_choices()


def test_invalid_combinations_are_refused_in_the_pages_language(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    info = {"pairs": {"file_name": "p.json", "ranking": True}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))
    base = {"model_name_or_path": "smollm2-135m-instruct", "stage": "sft", "dataset_dir": "builtin",
            "dataset": ["identity"], "output_dir": "saves/run"}

    def refusal(lang: str, **changes) -> str:
        with pytest.raises(FormError) as caught:
            check_training_form({**base, **changes}, lang)
        return str(caught.value)

    assert refusal("zh", dataset=[]) == t("error.no_dataset", "zh")
    assert refusal("en", dataset=[]) == t("error.no_dataset", "en")
    preference = refusal("zh", dataset=["pairs"], dataset_dir="data")
    assert "pairs" in preference and t("kind.ranking", "zh") in preference and "sft" in preference
    assert refusal("zh", dataset_dir="missing") == t("error.no_dataset_dir", "zh", path="missing")
    assert refusal("zh", model_name_or_path="no/model") == t("error.bad_model", "zh", path="no/model")
    assert refusal("en", adapter_name_or_path=["no/lora"]) == t("error.bad_adapter", "en", path="no/lora")
    invalid = refusal("zh", lora_rank=0)
    assert invalid.startswith("参数无效：") and "lora_rank" in invalid
    assert "unknown key" in refusal("en", lora_rnak=8)
    (tmp_path / "saves" / "run").mkdir(parents=True)
    (tmp_path / "saves" / "run" / "trainer_log.jsonl").write_text("{}\n")
    assert refusal("zh", dataset=["identity"]) == t("error.output_dir_used", "zh", path="saves/run")
    assert check_training_form({**base, "overwrite_output_dir": True}, "zh").data.dataset == ["identity"]


def test_a_loaded_config_keeps_the_keys_no_widget_shows():
    flat = load_config(None, ["max_new_tokens=64", "seed=3", "lora_rank=8"]).to_flat()
    assert carried_keys(flat, ["seed"]) == {"max_new_tokens": 64}


def test_runs_are_found_under_saves_per_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "saves" / "smollm2-135m-instruct" / "lora" / "2026-01-01-00-00-00"
    (run / "checkpoint-5").mkdir(parents=True)
    (run / "adapter_config.json").write_text("{}")
    (run / "checkpoint-5" / "adapter_config.json").write_text("{}")
    full = tmp_path / "saves" / "smollm2-135m-instruct" / "full" / "run1"
    full.mkdir(parents=True)
    (full / "config.json").write_text("{}")
    (tmp_path / "saves" / "smollm2-135m-instruct" / "lora" / "empty").mkdir()
    labels = [label for label, _ in list_runs("smollm2-135m-instruct")]
    assert sorted(labels) == ["full/run1", "lora/2026-01-01-00-00-00",
                              "lora/2026-01-01-00-00-00/checkpoint-5"]
    assert model_folder_name("/models/My Model/") == "My-Model" and model_folder_name("x/m.gguf") == "m"
    model, adapters = split_picked("smollm2-135m-instruct", [str(run), str(full)])
    assert (model, adapters) == (str(full), [str(run)])


def test_the_language_selector_relabels_every_registered_text(app):
    english, chinese = app.page.localizer.updates("en"), app.page.localizer.updates("zh")
    assert len(english) == len(chinese) == len(app.page.localizer.components) > 140
    changed = sum(1 for en, zh in zip(english, chinese, strict=True) if en != zh)
    assert changed / len(english) > 0.9  # a few texts read the same (e.g. "LoRA rank" stays "LoRA 秩" ...)
    entries = zip(app.page.localizer.entries, chinese, strict=True)
    tabs = [update["label"] for (component, _), update in entries if isinstance(component, gr.Tab)]
    assert tabs == ["训练", "评估与预测", "对话", "导出"]
    assert all(value for update in chinese for key, value in update.items() if key != "__type__")
