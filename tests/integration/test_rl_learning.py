"""Proof that the RL stages learn, on the built-in SmolLM2-135M-Instruct.

GRPO trains ``examples/grpo.yaml`` (the ``rl_count_demo`` prompts, "list exactly N
items", scored by the verifiable ``item_count`` reward) and must raise the mean
reward of its own samples. PPO trains ``examples/ppo.yaml`` against a reward model
trained first with ``stage: rm`` (``examples/reward_model.yaml``, a few steps) and
must raise that model's score. Both compare the mean of the first and the last
logged steps' ``reward/mean`` (each the mean over that step's samples).
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 5  # logged steps averaged at each end of the curve
# Measured (seeded runs on a shared 2-core CPU), mean of the first 5 -> last 5 steps:
# GRPO 0.47 -> 0.67 over 20 steps (16 samples a step); PPO with the test's settings below
# (2 PPO epochs at 2e-4 instead of the example's 4 at 1e-4, to halve its update time)
# 0.10 -> 0.61 (seed 42) and 0.10 -> 0.43 (seed 1) over 20 steps of 8 samples,
# reward-model scores spread +-0.9. The margins leave at least a third as slack.
GRPO_MARGIN = 0.1
PPO_MARGIN = 0.2
PPO_TEST_SETTINGS = ("ppo_epochs=2", "learning_rate=2.0e-4")


def train(example: str, output_dir: Path, *overrides: str) -> list[dict]:
    command = [sys.executable, "-m", "tunery", "train", f"examples/{example}", f"output_dir={output_dir}",
               *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]


def reward_curve(log: list[dict]) -> tuple[float, float]:
    rewards = [entry["reward/mean"] for entry in log if "reward/mean" in entry]
    assert len(rewards) >= 2 * WINDOW, rewards
    return statistics.fmean(rewards[:WINDOW]), statistics.fmean(rewards[-WINDOW:])


def test_grpo_raises_the_verifiable_reward(tmp_path):
    log = train("grpo.yaml", tmp_path / "grpo", "max_steps=20")
    start, end = reward_curve(log)
    assert end > start + GRPO_MARGIN, (start, end)
    assert {"kl", "clip_fraction", "completion_length", "time/rollout"} <= set(log[-1])


def test_ppo_raises_the_reward_model_score(tmp_path):
    train("reward_model.yaml", tmp_path / "rm", "num_train_epochs=1", "val_size=0", "eval_strategy=no")
    log = train("ppo.yaml", tmp_path / "ppo", f"reward_model={tmp_path / 'rm'}", *PPO_TEST_SETTINGS)
    start, end = reward_curve(log)
    assert end > start + PPO_MARGIN, (start, end)
    assert {"value_loss", "kl", "rewards/reward_model"} <= set(log[-1])
    assert (tmp_path / "ppo" / "value_head.safetensors").is_file()
