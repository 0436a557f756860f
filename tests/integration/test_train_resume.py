"""A run killed with SIGKILL mid-training and resumed ends with the same weights as an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file
from train_tiny import REPO_ROOT, run_config, run_module, save_tiny_model, subprocess_env, write_config

# The real entry point, with each optimizer step slowed down so the kill lands mid-run.
SLOW_RUN = """
import sys, time
import tunery.train.run as run
from tunery.train.stages.sft import SupervisedStage

class SlowStage(SupervisedStage):
    def on_step_end(self, loop):
        time.sleep(0.4)

run.get_stage = lambda name, config, tokenizer=None: SlowStage(config, tokenizer)
sys.exit(run.main(sys.argv[1:]))
"""

KEYS = {"max_steps": 10, "save_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
        "lora_dropout": 0.1, "lr_scheduler_type": "cosine", "warmup_ratio": 0.2, "max_grad_norm": 0.5}


def kill_after_checkpoint(command: list[str], checkpoint, home, timeout: float = 240) -> None:
    process = subprocess.Popen(command, env=subprocess_env(home), cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not checkpoint.exists():
            assert process.poll() is None, "the run ended before its checkpoint appeared"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    home, model_dir = tmp_path / "home", save_tiny_model(tmp_path / "tiny-model")
    straight = write_config(tmp_path / "a.yaml", run_config(model_dir, tmp_path / "a", **KEYS))
    result = run_module(["-m", "tunery.train.run", str(straight)], home)
    assert result.returncode == 0, result.stderr[-2000:]

    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    killed = write_config(tmp_path / "b.yaml", run_config(model_dir, tmp_path / "b", **KEYS))
    kill_after_checkpoint([sys.executable, str(script), str(killed)], tmp_path / "b" / "checkpoint-4", home)
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()  # it really died mid-run
    result = run_module(["-m", "tunery.train.run", str(killed), "resume_from_checkpoint=true"], home)
    assert result.returncode == 0, result.stderr[-2000:]

    expected = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    found = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert set(found) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(found[name], tensor), name
    log_a = (tmp_path / "a" / "trainer_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "trainer_log.jsonl").read_text().splitlines()
    assert len(log_a) == len(log_b) == 10


def test_sigint_stops_at_a_step_with_a_checkpoint_and_the_run_resumes(tmp_path):
    home, model_dir = tmp_path / "home", save_tiny_model(tmp_path / "tiny-model")
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    keys = run_config(model_dir, tmp_path / "c", **{**KEYS, "save_steps": 1000})  # only the stop saves
    config = write_config(tmp_path / "c.yaml", keys)
    process = subprocess.Popen([sys.executable, str(script), str(config)], env=subprocess_env(home),
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "c" / "trainer_log.jsonl"
    deadline = time.time() + 240
    while not (log.exists() and log.read_text().strip()):
        assert process.poll() is None and time.time() < deadline, "the run never logged a step"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # what the web UI's Abort sends
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 130, errors[-2000:]
    checkpoints = sorted((tmp_path / "c").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and "Stopped at step" in errors
    stopped_at = int(checkpoints[0].name.removeprefix("checkpoint-"))
    assert 1 <= stopped_at < KEYS["max_steps"]
    assert not (tmp_path / "c" / "adapter_model.safetensors").exists()  # not mistaken for a finished run

    result = run_module(["-m", "tunery.train.run", str(config), "resume_from_checkpoint=true"], home)
    assert result.returncode == 0, result.stderr[-2000:]
    steps = [json.loads(line)["current_steps"] for line in log.read_text().splitlines()]
    assert steps[-1] == KEYS["max_steps"]
