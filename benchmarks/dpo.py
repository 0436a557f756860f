"""LoRA DPO benchmark: SmolLM2-135M on 32 pairs of dpo_en_demo, one epoch; prints ONE JSON object.

Usage (from anywhere; paths resolve against the repository root)::

    python benchmarks/dpo.py            # fp32
    python benchmarks/dpo.py --bf16     # bf16 weights (AMX on CPU)
    python benchmarks/dpo.py key=value  # any config override

Same entry point as ``tunery train`` (``run_training``), in-process. Reported:
wall time (config load to return, including the reference pass and model load),
train time (the loop's ``train_runtime``; the reference log-probs are computed
inside it, before the first step), samples/s (pairs per second of training time),
peak RSS, and the last logged loss, reward accuracy and margin.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sft import last_value, peak_rss_mb, read_log, train_in_process

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "dpo_bench.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true", help="train with bf16 weights")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    output_dir = Path(tempfile.mkdtemp(prefix="tunery-bench-dpo-"))
    overrides = [f"output_dir={output_dir}", f"bf16={str(args.bf16).lower()}", *args.overrides]
    start = time.perf_counter()
    metrics = train_in_process(str(CONFIG), overrides)
    wall = time.perf_counter() - start
    log = read_log(output_dir)
    print(json.dumps({
        "benchmark": "dpo_lora_smollm2_135m_dpo_en_demo32",
        "bf16": args.bf16,
        "wall_time_s": round(wall, 2),
        "train_time_s": round(metrics["train_runtime"], 2),
        "samples_per_s": metrics["train_samples_per_second"],
        "tokens_per_s": metrics["train_tokens_per_second"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "train_loss": metrics["train_loss"],
        "final_loss": last_value(log, "loss"),
        "final_reward_accuracy": last_value(log, "rewards/accuracies"),
        "final_reward_margin": last_value(log, "rewards/margins"),
        "cpu_count": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
