"""Proof that preference training learns, on the built-in SmolLM2-135M-Instruct.

DPO and the reward model train on the built-in pairs (a helpful answer preferred
over a refusal) and are judged on 8 held-out pairs (`val_size: 8`): the held-out
chosen-over-rejected margin and accuracy must rise from where they start.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def train(example: str, output_dir: Path, *overrides: str) -> dict:
    """Train an example with evaluation at the end; the held-out metrics (eval_results.json)."""
    command = [sys.executable, "-m", "tunery", "train", f"examples/{example}", f"output_dir={output_dir}",
               "do_eval=true", "eval_strategy=no", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output_dir / "eval_results.json").read_text())


# Before training the policy IS its reference, so every held-out margin is 0 and no pair
# counts as won (accuracy 0): the thresholds below can only be met by learning.


def test_dpo_raises_the_held_out_preference_margin_and_accuracy(tmp_path):
    results = train("dpo.yaml", tmp_path / "dpo")
    assert results["eval_rewards/margins"] > 1.0, results
    assert results["eval_rewards/accuracies"] >= 0.875, results
    log = [json.loads(line) for line in (tmp_path / "dpo" / "trainer_log.jsonl").read_text().splitlines()]
    trained = [entry for entry in log if "rewards/margins" in entry]
    assert trained[-1]["rewards/margins"] > trained[0]["rewards/margins"]


def test_reward_model_ranks_held_out_pairs_better_than_chance(tmp_path):
    results = train("reward_model.yaml", tmp_path / "rm")
    assert results["eval_rewards/accuracies"] >= 0.875, results
    assert (tmp_path / "rm" / "value_head.safetensors").is_file()
