"""The Chat and Export tabs' actions on the tiny model, called the way the page calls them.

A page is built (no server); each action gets the widgets' values as the dict
Gradio passes, so what the page would send is what is tested: the chat loads
the picked adapter and unloading frees the model; the export writes a merged
model and says where.
"""

import gc
import os
import weakref
from pathlib import Path

import pytest
from train_tiny import run_config, save_tiny_model

from tunery.config.load import build_config
from tunery.train.run import run_training
from tunery.webui import t
from tunery.webui.chat_tab import load_model, unload_model
from tunery.webui.export_tab import run_export


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model and a LoRA adapter trained on it for two steps."""
    folder = tmp_path_factory.mktemp("webui-tabs")
    model = save_tiny_model(folder / "model")
    run_training(build_config(run_config(model, folder / "adapter", max_steps=2)))
    return model, folder / "adapter"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from tunery.webui.app import create_app

    folder = tmp_path_factory.mktemp("webui-tabs-page")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield create_app("en", folder / "jobs")
    finally:
        os.chdir(previous)


def page_values(app, form: str, lang: str = "en", **values) -> dict:
    """What Gradio passes to a callback whose inputs are the top bar and ``form`` as a set."""
    data = {app.page.lang: lang}
    for name in ("top", form):
        for key, component in app.forms[name].fields.items():
            data[component] = values.get(key, component.value)
    return data


def test_the_chat_loads_the_picked_adapter_and_unloading_frees_the_model(app, trained):
    model, adapter = trained
    values = page_values(app, "chat", model_name_or_path=str(model), template="chatml",
                         adapter_name_or_path=[str(adapter)])
    status, system = load_model(app.models, app.page, app.forms["chat"], values)
    assert status == "✓ " + t("chat.loaded", "en", name=f"{model} + {adapter}")
    assert system == app.models.engine.template.default_system
    assert app.models.engine.config.model.adapter_name_or_path == [str(adapter)]
    weights = weakref.ref(app.models.engine.model)

    assert unload_model(app.models, "zh") == t("chat.unloaded", "zh")
    gc.collect()
    assert app.models.engine is None and weights() is None  # nothing holds the weights any more


def test_the_chat_refuses_a_missing_adapter_in_the_pages_language(app, trained):
    model, _ = trained
    values = page_values(app, "chat", lang="zh", model_name_or_path=str(model), template="chatml",
                         adapter_name_or_path=["no/such/adapter"])
    status, _ = load_model(app.models, app.page, app.forms["chat"], values)
    assert status == "✗ " + t("error.bad_adapter", "zh", path="no/such/adapter")
    assert app.models.engine is None


def test_the_export_merges_the_adapter_and_says_where_the_files_went(app, trained, tmp_path):
    model, adapter = trained
    target = tmp_path / "merged"
    values = page_values(app, "export", model_name_or_path=str(model), template="chatml",
                         adapter_name_or_path=[str(adapter)], export_dir=str(target))
    messages = list(run_export(app.page, app.forms["export"], values))
    assert messages[0].startswith(t("export.running", "en", path=target).split("`")[0])
    assert messages[-1].startswith("✓ " + t("export.done", "en", path="", files="").split("`")[0])
    assert str(target) in messages[-1] and "`model.safetensors`" in messages[-1]
    assert (target / "model.safetensors").is_file() and (target / "Modelfile").is_file()


def test_the_export_needs_a_folder(app, trained):
    model, _ = trained
    values = page_values(app, "export", lang="zh", model_name_or_path=str(model), export_dir="")
    assert list(run_export(app.page, app.forms["export"], values)) == ["✗ " + t("export.no_dir", "zh")]


def train_values(app, lang: str = "en", config_path: str = "", carried: dict | None = None, **values) -> dict:
    data = page_values(app, "train", lang, **values)
    return {**data, app.train.config_path: config_path, app.train.carried: carried or {}}


def test_train_arguments_are_saved_and_loaded_with_the_keys_no_widget_shows(app, trained, tmp_path):
    model, _ = trained
    path = tmp_path / "args.yaml"
    values = train_values(app, config_path=str(path), carried={"max_new_tokens": 64},
                          model_name_or_path=str(model), template="chatml", dataset=["identity"],
                          dataset_dir="builtin", learning_rate="3e-4", lora_rank=16, compute_type="fp32",
                          output_dir=str(tmp_path / "run"))
    status, shown_path = app.train.save(values)
    assert status == t("train.saved", "en", path=path) and shown_path == str(path)
    saved = path.read_text()
    assert "learning_rate: 0.0003" in saved and "lora_rank: 16" in saved and "max_new_tokens: 64" in saved

    updates = app.train.load(train_values(app, "zh", config_path=str(path)))
    top, train = app.forms["top"].fields, app.forms["train"].fields
    by_key = dict(zip([*top, *train, "carried", "status"], updates, strict=True))
    assert by_key["model_name_or_path"]["value"] == str(model)
    assert by_key["learning_rate"]["value"] == "0.0003" and by_key["lora_rank"]["value"] == 16
    assert by_key["dataset"]["value"] == ["identity"] and by_key["compute_type"]["value"] == "fp32"
    assert by_key["carried"] == {"max_new_tokens": 64}
    assert by_key["status"] == t("train.loaded", "zh", path=path) + " " + \
        t("train.loaded_kept", "zh", keys="max_new_tokens")


def test_train_preview_shows_the_command_start_runs_and_refuses_bad_forms(app, trained, tmp_path):
    model, _ = trained
    run = tmp_path / "run"
    values = train_values(app, model_name_or_path=str(model), template="chatml", dataset=["identity"],
                          dataset_dir="builtin", max_steps=2, output_dir=str(run))
    status, command, yaml_text, _ = app.train.preview_command(values)
    assert command == f"tunery train {run / 'training_args.yaml'}"
    assert status == t("train.preview_done", "en", path=run / "training_args.yaml")
    assert f"model_name_or_path: {model}" in yaml_text and "max_steps: 2" in yaml_text

    refused = app.train.start({**values, app.forms["train"].fields["dataset"]: []})
    assert refused[0] == "✗ " + t("error.no_dataset", "en") and not run.exists()
    refused = app.train.start(train_values(app, "zh", model_name_or_path=str(model), dataset=["text_demo"],
                                           dataset_dir="builtin", output_dir=str(run)))
    assert refused[0].startswith("✗ 数据集“text_demo”") and not run.exists()


def test_a_failed_run_shows_its_error_instead_of_a_frozen_bar(app, trained, tmp_path, monkeypatch):
    from train_tiny import REPO_ROOT, write_config

    from tunery.webui.runner import start_job, wait_for

    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT / "src"))
    model, _ = trained
    config = write_config(tmp_path / "args.yaml", run_config(model, tmp_path / "run", dataset="missing_set"))
    job = start_job(app.page.registry, "train", ["train", str(config)], config, tmp_path / "run",
                    tmp_path / "run" / "train.log")
    assert wait_for(app.page.registry, job, 240).state == "failed"
    bar, plot, log, status, timer, _ = app.train.refresh("zh", None)
    assert "data-state='failed'" in bar and plot is None and not timer.active
    assert t("state.failed", "zh") in status and "error: Unknown dataset 'missing_set'" in status
    assert "error: Unknown dataset 'missing_set'" in log
