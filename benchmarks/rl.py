"""GRPO benchmark: SmolLM2-135M, 8 prompts x 4 generations, 48 new tokens per step; prints ONE JSON object.

Usage (from anywhere; paths resolve against the repository root)::

    python benchmarks/rl.py            # bf16 autocast (AMX on CPU)
    python benchmarks/rl.py --fp32     # float32
    python benchmarks/rl.py key=value  # any config override (e.g. max_steps=5)

The job is ``examples/grpo.yaml`` (LoRA rank 16, ``item_count`` reward on the
built-in ``rl_count_demo`` prompts) with 8 prompts per step, ``num_generations``
4 and ``max_new_tokens`` 48, for ``max_steps`` steps, in-process through
``run_training``. Reported: seconds per step and their split into rollout
(generation, scoring, the reference pass) and update (forward, backward,
optimizer), rollout tokens/s (completion tokens generated per second of
generation), peak RSS, and the first and last logged mean reward. The first
step is left out of the per-step means (warm-up).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sft import peak_rss_mb, read_log, train_in_process

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "grpo.yaml"
JOB = ["per_device_train_batch_size=8", "num_generations=4", "max_new_tokens=48", "max_steps=4",
       "logging_steps=1", "save_steps=1000", "plot_loss=false"]


def mean_after_warmup(log: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in log if key in entry]
    values = values[1:] if len(values) > 1 else values
    return round(statistics.fmean(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", action="store_true", help="float32 instead of bf16 autocast")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    output_dir = Path(tempfile.mkdtemp(prefix="tunery-bench-rl-"))
    overrides = [*JOB, f"output_dir={output_dir}", f"bf16={str(not args.fp32).lower()}", *args.overrides]
    start = time.perf_counter()
    metrics = train_in_process(str(CONFIG), overrides)
    wall = time.perf_counter() - start
    log = [entry for entry in read_log(output_dir) if "reward/mean" in entry]
    rollout, update = mean_after_warmup(log, "time/rollout"), mean_after_warmup(log, "time/update")
    print(json.dumps({
        "benchmark": "grpo_lora_smollm2_135m_8x4_48tokens",
        "bf16": not args.fp32,
        "steps": len(log),
        "wall_time_s": round(wall, 2),
        "seconds_per_step": round(rollout + update, 3) if rollout is not None else None,
        "rollout_s_per_step": rollout,
        "update_s_per_step": update,
        "rollout_tokens_per_s": mean_after_warmup(log, "rollout_tokens_per_second"),
        "completion_length": mean_after_warmup(log, "completion_length"),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "first_reward_mean": log[0]["reward/mean"] if log else None,
        "last_reward_mean": log[-1]["reward/mean"] if log else None,
        "train_runtime_s": metrics.get("train_runtime"),
        "cpu_count": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
