"""Every fine-tuning method trains end to end in fp32 and bf16, on the tiny saved model.

bf16 on the CPU keeps frozen weights in bf16 and trainable ones in fp32, so each
method that trains whole modules (freeze, full, LoRA with `additional_target`,
a template that adds tokens) mixes dtypes and must still run.
"""

import json

import pytest
from train_tiny import run_config, save_tiny_model

from tunery.config.load import build_config
from tunery.train.run import run_training

METHODS = {
    "freeze": {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
    "full": {"finetuning_type": "full"},
    "lora+embeddings": {"finetuning_type": "lora", "additional_target": "embed_tokens"},
    "lora+new tokens": {"finetuning_type": "lora", "template": "llama3"},  # adds <|eot_id|>, <|eom_id|>
    "loraplus": {"finetuning_type": "lora", "loraplus_lr_ratio": 16.0},
}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_saves(method, bf16, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    keys = run_config(tiny_model_dir, out, max_steps=3, bf16=bf16, **METHODS[method])
    metrics = run_training(build_config(keys))
    assert metrics["train_loss"] > 0
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(entry["loss"] == entry["loss"] for entry in log)  # no NaN
    saved = {path.name for path in out.iterdir()}
    expected = "adapter_model.safetensors" if keys["finetuning_type"] == "lora" else "model.safetensors"
    assert expected in saved


def test_training_continues_a_given_adapter(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    first, second = tmp_path / "first", tmp_path / "second"
    run_training(build_config(run_config(tiny_model_dir, first, max_steps=2, lora_rank=2)))
    keys = run_config(tiny_model_dir, second, max_steps=2, lora_rank=8, adapter_name_or_path=str(first))
    run_training(build_config(keys))
    adapter = json.loads((second / "adapter_config.json").read_text())
    assert adapter["r"] == 2, "the given adapter is trained further, not replaced by a new rank-8 one"
