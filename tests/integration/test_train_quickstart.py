"""A quickstart-like run end to end: config -> tokenizer, template, data, model, loop -> output_dir."""

import json

import pytest
from safetensors.torch import load_file
from train_tiny import run_config, run_module, save_tiny_model, write_config

from tunery.config import load_config
from tunery.train.run import run_training


@pytest.fixture
def tiny_model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    return save_tiny_model(tmp_path / "tiny-model")


def test_sft_run_writes_adapter_logs_config_and_results(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    path = write_config(tmp_path / "run.yaml", run_config(
        tiny_model_dir, out, plot_loss=True, val_size=0.25, do_eval=True, eval_strategy="steps",
        eval_steps=3, bf16=True,
    ))
    metrics = run_training(load_config(path))
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "run_config.yaml",
                 "trainer_log.jsonl", "training_loss.png", "all_results.json", "checkpoint-6"):
        assert (out / name).exists(), name
    assert load_file(str(out / "adapter_model.safetensors"))
    results = json.loads((out / "all_results.json").read_text())
    assert {"train_loss", "eval_loss", "perplexity", "train_runtime"} <= set(results)
    assert results["eval_loss"] == metrics["eval_loss"]
    reloaded = load_config(out / "run_config.yaml")
    assert reloaded.model.model_name_or_path == str(tiny_model_dir) and reloaded.finetuning.lora_rank == 4
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [e["current_steps"] for e in log if "eval_loss" in e] == [3, 6]
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".saving-*"))


def test_pretraining_stage_on_packed_text(tmp_path, tiny_model_dir):
    out = tmp_path / "pt"
    config = load_config(None, [f"{k}={v}" for k, v in run_config(
        tiny_model_dir, out, stage="pt", dataset="text_demo", finetuning_type="full", max_steps=3,
    ).items()])
    metrics = run_training(config)
    assert metrics["train_loss"] > 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_module_entry_point_reports_config_errors_in_one_line(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"lora_rnak": 8})
    result = run_module(["-m", "tunery.train.run", str(bad)], tmp_path / "home")
    assert result.returncode == 2
    assert "did you mean 'lora_rank'" in result.stderr and "Traceback" not in result.stderr
