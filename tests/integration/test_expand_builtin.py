"""LLaMA Pro on the real SmolLM2-135M-Instruct: expansion keeps the logits, training moves only new blocks."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.config.load import build_config
from tunery.model.expand import expand_model
from tunery.model.load import resolve_model
from tunery.train.run import run_training

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


def logits(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_expand_smollm2_then_train_only_the_new_blocks(tmp_path):
    base = resolve_model("smollm2-135m-instruct").path
    expansion = expand_model("smollm2-135m-instruct", 2, tmp_path / "pro")  # 30 -> 32 layers
    assert expansion.new_layers == [15, 31]
    ids = AutoTokenizer.from_pretrained(expansion.folder)(PROMPT, return_tensors="pt").input_ids
    expanded_logits = logits(expansion.folder, ids)
    assert expanded_logits.shape == logits(base, ids).shape
    torch.testing.assert_close(expanded_logits, logits(base, ids), atol=1e-5, rtol=0)

    out = tmp_path / "out"
    keys = {
        "model_name_or_path": str(expansion.folder), "template": "smollm2", "stage": "sft",
        "finetuning_type": "freeze", "use_llama_pro": True, "freeze_trainable_layers": 2,
        "dataset": "identity", "dataset_dir": "builtin", "cutoff_len": 128, "max_samples": 8,
        "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-4, "output_dir": str(out),
        "report_to": "none", "save_steps": 1000,
    }
    run_training(build_config(keys))
    before, after = load_file(expansion.folder / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {key for key in before if not torch.equal(before[key], after[key].to(before[key].dtype))}
    assert changed, "the new blocks must train"
    assert all(".layers.15." in key or ".layers.31." in key for key in changed), sorted(changed)[:5]
