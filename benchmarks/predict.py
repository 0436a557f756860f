"""Batched prediction benchmark: SmolLM2-135M, 64 alpaca prompts, 64 new tokens; prints ONE JSON object.

Usage (from anywhere; paths resolve against the repository root)::

    python benchmarks/predict.py                     # 64 batched 16 per generate, then 16 one by one
    python benchmarks/predict.py --batch-size 32     # another batch size
    python benchmarks/predict.py --skip-sequential   # batched only

Both modes go through the library's own prediction path (``tunery.infer.predict``)
with greedy decoding on one loaded engine, so the comparison is batching alone.
Reported per mode: generation time, samples/s, generated tokens/s; plus the
speed-up of batching, peak RSS, and whether both modes wrote the same text.
"""

import argparse
import json
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    parser.add_argument("--skip-sequential", action="store_true", help="do not measure one prompt at a time")
    parser.add_argument("--sequential-prompts", type=int, default=16,
                        help="prompts generated one at a time (a rate needs no more; default 16)")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    return parser.parse_args(argv)


def bench_config(overrides: list[str]):
    from tunery.config import load_config

    return load_config(None, [
        "model_name_or_path=smollm2-135m-instruct", "eval_dataset=alpaca_en_demo",
        f"dataset_dir={ROOT.parent / 'shared' / 'peer-data'}", f"max_samples={PROMPTS}", "cutoff_len=512",
        "max_new_tokens=64", "do_sample=false", "do_train=false", *overrides,
    ])


def measure(config, engine, batch_size: int, prompts: int = PROMPTS) -> tuple[dict, list[str]]:
    from tunery.infer.predict import predict

    config.training.per_device_eval_batch_size = batch_size
    config.data.max_samples = prompts
    run = predict(config, engine)
    metrics = run.metrics
    return {
        "batch_size": batch_size,
        "prompts": prompts,
        "time_s": metrics["predict_runtime"],
        "samples_per_s": metrics["predict_samples_per_second"],
        "tokens_per_s": metrics["predict_tokens_per_second"],
    }, run.predictions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    from tunery.infer.engine import ChatEngine

    config = bench_config(args.overrides)
    engine = ChatEngine(config)
    batched, batched_text = measure(config, engine, args.batch_size)
    result = {"benchmark": "predict_smollm2_135m_alpaca64_new64", "prompts": PROMPTS, "batched": batched}
    if not args.skip_sequential:
        sequential, sequential_text = measure(config, engine, 1, args.sequential_prompts)
        result["sequential"] = sequential
        result["speedup"] = round(batched["samples_per_s"] / sequential["samples_per_s"], 2)
        same = sum(a == b for a, b in zip(batched_text, sequential_text, strict=False))
        result["identical_outputs"] = f"{same}/{len(sequential_text)}"  # padding may change a rounding
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
