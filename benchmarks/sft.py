"""LoRA SFT benchmark: SmolLM2-135M on 64 alpaca examples, one epoch; prints ONE JSON object.

Usage (from anywhere; paths resolve against the repository root)::

    python benchmarks/sft.py            # fp32
    python benchmarks/sft.py --bf16     # bf16 weights (AMX on CPU)
    python benchmarks/sft.py --subprocess key=value ...   # run `tunery train` as a child

The run goes through the same entry point as the CLI (``run_training``). Reported:
wall time (config load to return), train time (the loop's own ``train_runtime``),
samples/s, tokens/s over real (non-padding) input tokens, peak RSS of this process
and any children (``ru_maxrss``), the average and the last logged training loss,
and the optimizer steps.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "sft_bench.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true", help="train with bf16 weights")
    parser.add_argument("--config", default=str(CONFIG), help="benchmark YAML (default: sft_bench.yaml)")
    parser.add_argument("--subprocess", action="store_true", help="spawn `tunery train` instead")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    return parser.parse_args(argv)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its (waited-for) children, in MiB (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def read_log(output_dir: Path) -> list[dict]:
    """The training log entries (trainer_log.jsonl), oldest first."""
    log = output_dir / "trainer_log.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def last_value(entries: list[dict], key: str):
    values = [entry[key] for entry in entries if key in entry]
    return values[-1] if values else None


def train_in_process(config_path: str, overrides: list[str]) -> dict:
    from tunery.config import load_config
    from tunery.train.run import run_training

    return run_training(load_config(config_path, overrides))


def train_in_child(config_path: str, overrides: list[str], output_dir: Path) -> dict:
    command = [sys.executable, "-m", "tunery.train.run", config_path, *overrides]
    subprocess.run(command, check=True, cwd=ROOT, stdout=sys.stderr)
    return json.loads((output_dir / "train_results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)  # dataset_dir and output_dir in the YAML are relative to the repository root
    output_dir = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    overrides = [f"output_dir={output_dir}", f"bf16={str(args.bf16).lower()}", *args.overrides]
    start = time.perf_counter()
    if args.subprocess:
        metrics = train_in_child(args.config, overrides, output_dir)
    else:
        metrics = train_in_process(args.config, overrides)
    wall = time.perf_counter() - start
    runtime = metrics["train_runtime"]
    log = read_log(output_dir)
    result = {
        "benchmark": "sft_lora_smollm2_135m_alpaca64",
        "bf16": args.bf16,
        "mode": "subprocess" if args.subprocess else "in_process",
        "wall_time_s": round(wall, 2),
        "train_time_s": round(runtime, 2),
        "samples_per_s": metrics["train_samples_per_second"],
        "tokens_per_s": metrics["train_tokens_per_second"],
        "tokens": round(metrics["train_tokens_per_second"] * runtime),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "train_loss": metrics["train_loss"],
        "final_loss": last_value(log, "loss"),
        "steps": last_value(log, "current_steps"),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
