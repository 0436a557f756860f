"""The README's workflow on the real built-in SmolLM2-135M-Instruct, shortened to a few steps.

`tunery train` on the shipped examples (SFT with LoRA, continued pre-training),
then the trained adapter is chatted with and loaded by plain transformers + peft.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.infer.engine import ChatEngine

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def tunery(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "tunery", *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def quickstart_adapter(tmp_path_factory) -> Path:
    """The README's quickstart exactly as shipped (about a minute of training on 2 cores)."""
    out = tmp_path_factory.mktemp("quickstart") / "adapter"
    tunery("train", "examples/quickstart.yaml", f"output_dir={out}")
    return out


def test_quickstart_trains_and_logs(quickstart_adapter):
    log = [json.loads(line) for line in (quickstart_adapter / "trainer_log.jsonl").read_text().splitlines()]
    assert [entry["current_steps"] for entry in log] == [*range(5, 66, 5), 66]  # and the last step
    assert all(entry["total_steps"] == 66 for entry in log)
    assert log[-1]["loss"] < log[0]["loss"] / 2, "the identity data must be learned"
    assert (quickstart_adapter / "training_loss.png").stat().st_size > 0
    adapter_config = json.loads((quickstart_adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8
    assert set(adapter_config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }


def test_the_tuned_model_knows_its_new_name(quickstart_adapter):
    config = load_config(None, [f"adapter_name_or_path={quickstart_adapter}", "do_train=false",
                                "do_sample=false", "max_new_tokens=24"])
    engine = ChatEngine(config)
    pieces = list(engine.stream_chat([Message(Role.USER, "Who are you?")]))
    assert len(pieces) > 1, "the reply streams in pieces"
    assert "Tunery" in "".join(pieces)


def test_adapter_loads_in_plain_transformers_and_peft(quickstart_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.model.load import resolve_model

    base_dir = resolve_model("smollm2-135m-instruct").path
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), quickstart_adapter)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert not torch.allclose(tuned, base), "the trained adapter must change the model's output"


def test_pretraining_example_runs(tmp_path):
    out = tmp_path / "pt"
    tunery("train", "examples/pretrain.yaml", f"output_dir={out}", "max_steps=2", "logging_steps=1")
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    assert (out / "adapter_model.safetensors").exists()


def test_data_check_on_the_quickstart_config():
    report = tunery("data", "check", "examples/quickstart.yaml").stdout
    assert "identity_tunery" in report
    assert "88 valid, 0 skipped of 88 rows" in report
    assert "[[" in report, "learned tokens are marked"
    lines = tunery("data", "check", "examples/quickstart.yaml", "--json").stdout.splitlines()
    first = json.loads(lines[0])
    assert len(first["input_ids"]) == len(first["labels"])
    assert any(label != -100 for label in first["labels"])


@pytest.mark.parametrize(
    "example", ["full_sft.yaml", "freeze_sft.yaml", "loraplus_sft.yaml", "llamafactory_lora_sft.yaml",
                "dpo.yaml", "reward_model.yaml", "kto.yaml"]
)
def test_every_other_example_trains_a_step(example, tmp_path):
    out = tmp_path / "out"
    tunery("train", f"examples/{example}", f"output_dir={out}", "max_steps=2", "logging_steps=1",
           "eval_steps=2")
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [entry["current_steps"] for entry in log if "loss" in entry] == [1, 2]
    assert (out / "run_config.yaml").is_file()


def test_predict_and_compare_examples_score_the_tuned_model_above_the_base(quickstart_adapter, tmp_path):
    adapter = f"adapter_name_or_path={quickstart_adapter}"
    tunery("predict", "examples/predict.yaml", adapter, f"output_dir={tmp_path / 'predict'}", "max_samples=8")
    lines = (tmp_path / "predict" / "generated_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 8
    report = tmp_path / "compare"
    tunery("compare", "examples/compare.yaml", adapter, f"output_dir={report}", "max_samples=8")
    results = json.loads((report / "compare_results.json").read_text())
    assert results["tuned"]["predict_rouge-l"] > results["base"]["predict_rouge-l"] + 10, results
    assert "Tunery" in (report / "compare_report.md").read_text()
    assert (report / "training_loss.png").is_file()
