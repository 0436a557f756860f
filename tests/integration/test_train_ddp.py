"""Two processes (DDP on CPU, gloo) follow the same loss curve as one process with the same global batch."""

import json

import pytest
from train_tiny import run_config, run_module, save_tiny_model, write_config

KEYS = {"max_steps": 5, "gradient_accumulation_steps": 2, "val_size": 6, "eval_strategy": "steps",
        "eval_steps": 5, "max_grad_norm": 1.0, "max_samples": 40}


def losses(output_dir) -> tuple[list[float], list[float]]:
    entries = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in entries if "loss" in e], [e["eval_loss"] for e in entries if "eval_loss" in e]


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2"],
    # the README's command; --multi_gpu selects DDP, which falls back to gloo on a CPU-only machine
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_match_one_process(tmp_path, launcher):
    home, model_dir = tmp_path / "home", save_tiny_model(tmp_path / "tiny-model")
    single = write_config(tmp_path / "one.yaml", run_config(
        model_dir, tmp_path / "one", per_device_train_batch_size=4, **KEYS))
    result = run_module(["-m", "tunery.train.run", str(single)], home)
    assert result.returncode == 0, result.stderr[-3000:]
    double = write_config(tmp_path / "two.yaml", run_config(
        model_dir, tmp_path / "two", per_device_train_batch_size=2, **KEYS))
    result = run_module([*LAUNCHERS[launcher], "-m", "tunery.train.run", str(double)], home)
    assert result.returncode == 0, result.stderr[-3000:]

    train_one, eval_one = losses(tmp_path / "one")
    train_two, eval_two = losses(tmp_path / "two")
    assert len(train_one) == len(train_two) == 5 and len(eval_one) == len(eval_two) == 1
    assert train_two == pytest.approx(train_one, abs=1e-4)
    assert eval_two == pytest.approx(eval_one, abs=1e-4)
    assert len(set(train_one)) > 1  # the curve moves: the comparison is not trivially true
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "two" / "checkpoint-5" / "rng_state_1.pth").is_file()  # really two processes
