"""DoRA, GaLore and layer-wise GaLore examples train a few steps on the built-in SmolLM2; outputs load."""

import json
from pathlib import Path

import pytest
import torch

from tunery.config import load_config
from tunery.model.load import load_model
from tunery.train.run import load_tokenizer_and_template, run_training

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# small steps (2 rows of at most 64 tokens, fp32) keep each test near half a minute on 2 cores
SHORT = ["max_steps=3", "logging_steps=1", "max_samples=8", "cutoff_len=64", "save_steps=1000",
         "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "bf16=false",
         "plot_loss=false", "lr_scheduler_type=constant", "warmup_ratio=0"]


def train_example(example: str, out: Path, *overrides: str) -> list[float]:
    config = load_config(ROOT / "examples" / example, [f"output_dir={out}", *SHORT, *overrides])
    run_training(config)
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [entry["loss"] for entry in log if "loss" in entry]


def first_logits(config) -> torch.Tensor:
    tokenizer, _ = load_tokenizer_and_template(config)
    model = load_model(config, tokenizer, for_training=False)
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer.encode("What is Tunery?")])).logits


def test_dora_example_trains_and_its_adapter_loads(tmp_path):
    out = tmp_path / "dora"
    losses = train_example("dora_sft.yaml", out)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True and adapter["use_rslora"] is True
    base = load_config(None, ["model_name_or_path=smollm2-135m-instruct"])
    tuned = load_config(None, ["model_name_or_path=smollm2-135m-instruct", f"adapter_name_or_path={out}"])
    tuned_logits = first_logits(tuned)
    assert torch.isfinite(tuned_logits).all()
    assert not torch.allclose(tuned_logits, first_logits(base))  # the merged DoRA adapter changed the model


@pytest.mark.parametrize("example", ["galore_full_sft.yaml", "galore_layerwise_sft.yaml"])
def test_galore_example_trains_full_weights_and_the_loss_falls(example, tmp_path):
    out = tmp_path / "galore"
    # a larger learning rate than the example's, so three steps on one repeated batch visibly learn;
    # GaLore's first step computes an SVD per targeted matrix, so the test targets two projections
    losses = train_example(example, out, "learning_rate=1e-4", "max_samples=2", "galore_target=q_proj,v_proj")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    saved = load_config(None, [f"model_name_or_path={out}", "template=smollm2"])
    assert torch.isfinite(first_logits(saved)).all()
