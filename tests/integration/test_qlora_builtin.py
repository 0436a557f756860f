"""QLoRA on the real built-in SmolLM2-135M-Instruct: examples/qlora_sft.yaml, shortened to a few steps.

`tunery train` quantizes the base to 4-bit NF4 while loading and trains LoRA on it; the
saved adapter then answers in chat, merged into the full-precision base.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.infer.engine import ChatEngine

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_qlora_example_trains_a_4bit_base_and_the_adapter_chats(tmp_path):
    out = tmp_path / "qlora"
    result = subprocess.run(
        # 4-bit matmuls on a CPU de-quantize every weight on every pass: a few small steps only
        [sys.executable, "-m", "tunery", "train", "examples/qlora_sft.yaml", f"output_dir={out}",
         "max_steps=4", "logging_steps=1", "cutoff_len=256", "per_device_train_batch_size=2"],
        capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Base model: 4-bit bnb" in result.stderr, "the base really was quantized"
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 4 and all(0 < loss < 20 for loss in losses), losses
    assert (out / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) >= {"q_proj", "down_proj"}

    config = load_config(None, [f"adapter_name_or_path={out}", "template=smollm2", "do_sample=false",
                                "max_new_tokens=16"])
    engine = ChatEngine(config)
    try:
        reply = engine.reply([Message(Role.USER, "Who are you?")])
    finally:
        engine.close()
    assert reply.completion_tokens > 0 and reply.text.strip()
