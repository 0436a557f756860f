"""Peak memory of one SFT step of SmolLM2-135M per method (LoRA fp32/8/4-bit, full AdamW/GaLore/layer-wise).

Usage (from anywhere; paths resolve against the repository root)::

    python benchmarks/memory.py                      # every configuration
    python benchmarks/memory.py --only lora_4bit full_adamw
    python benchmarks/memory.py cutoff_len=512       # key=value overrides for every run

Each configuration trains one optimizer step (``max_steps: 1``) of the built-in
``smollm2-135m-instruct`` on ``identity_tunery`` (batch 4, ``cutoff_len`` 256, fp32
compute) as ``python -m tunery.train.run`` in a fresh child process, and the child's
own peak RSS is read from ``os.wait4`` (per child, unlike ``RUSAGE_CHILDREN``, which
keeps the largest child seen so far). Before that, another fresh child only loads
the model as training does (quantized, LoRA applied), to separate what loading costs
from what the step costs. Prints ONE JSON object; per configuration:

- ``peak_rss_mb``: peak RSS of load + one training step (the number for "fits in memory");
- ``load_peak_rss_mb``: peak RSS of loading alone (the fp32 safetensors are read, mapped
  into memory, while a quantized copy is built);
- ``rss_after_load_mb``: RSS once loaded; ``weights_mb``: bytes of the model's parameters and
  buffers (HQQ keeps its scales outside them, so its figure is a lower bound);
- ``wall_time_s``, ``train_loss``, ``status`` ("ok", or "failed" with the last error line,
  e.g. when an optional package or feature is missing).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASE_KEYS = {
    "model_name_or_path": "smollm2-135m-instruct", "template": "smollm2", "stage": "sft",
    "dataset": "identity_tunery", "dataset_dir": "builtin", "cutoff_len": 256, "max_samples": 16,
    "per_device_train_batch_size": 4, "max_steps": 1, "learning_rate": 1e-4, "logging_steps": 1,
    "save_steps": 1000, "report_to": "none", "do_train": True, "seed": 42,
}

# name -> keys on top of BASE_KEYS
CONFIGURATIONS: dict[str, dict] = {
    "lora_fp32": {"finetuning_type": "lora"},
    "lora_8bit": {"finetuning_type": "lora", "quantization_bit": 8},
    "lora_4bit": {"finetuning_type": "lora", "quantization_bit": 4},
    "lora_hqq_4bit": {"finetuning_type": "lora", "quantization_bit": 4, "quantization_method": "hqq"},
    "full_adamw": {"finetuning_type": "full"},
    "full_galore": {"finetuning_type": "full", "use_galore": True, "galore_rank": 16},
    "full_galore_layerwise": {"finetuning_type": "full", "use_galore": True, "galore_rank": 16,
                              "galore_layerwise": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGURATIONS), help="run only these")
    parser.add_argument("--load-only", metavar="CONFIG", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    return parser.parse_args(argv)


def spawn(command: list[str], log: Path) -> tuple[int, float]:
    """Run ``command`` as a child; its exit code and its own peak RSS in MiB (from wait4)."""
    with log.open("w") as stream:
        child = subprocess.Popen(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, round(usage.ru_maxrss / 1024, 1)  # ru_maxrss is in KiB on Linux


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_configuration(keys: dict, overrides: list[str], workdir: Path) -> dict:
    """The model load alone, then load + one training step, each in a fresh process."""
    import yaml

    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(keys))
    code, load_peak = spawn([sys.executable, __file__, "--load-only", str(config), *overrides],
                            workdir / "load.log")
    result: dict = {"load_peak_rss_mb": load_peak}
    reports = [line for line in (workdir / "load.log").read_text().splitlines() if line.startswith("{")]
    if code == 0 and reports:
        result.update(json.loads(reports[-1]))
    start = time.perf_counter()
    code, peak = spawn([sys.executable, "-m", "tunery.train.run", str(config), *overrides],
                       workdir / "train.log")
    result.update(peak_rss_mb=peak, wall_time_s=round(time.perf_counter() - start, 1))
    results = Path(keys["output_dir"]) / "train_results.json"
    if code == 0 and results.is_file():
        result.update(status="ok", train_loss=json.loads(results.read_text()).get("train_loss"))
    else:
        result.update(status="failed", exit_code=code, error=last_line(workdir / "train.log"))
    return result


def load_only(config_path: str, overrides: list[str]) -> None:
    """Child mode: load the model as training would; print its RSS after loading and its weight bytes."""
    import gc

    from tunery.config import load_config
    from tunery.model.adapters import apply_finetuning
    from tunery.model.load import load_model
    from tunery.train.run import load_tokenizer_and_template

    config = load_config(config_path, overrides)
    tokenizer, _ = load_tokenizer_and_template(config)
    model = load_model(config, tokenizer, for_training=True)
    model = apply_finetuning(model, config.finetuning, config.model.adapter_name_or_path, run_config=config)
    gc.collect()
    tensors = [*model.parameters(), *model.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    status = Path("/proc/self/status").read_text()
    rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    report = {"rss_after_load_mb": round(rss_kib / 1024, 1), "weights_mb": round(weights / 2**20, 1)}
    print(json.dumps(report), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_only:
        load_only(args.load_only, args.overrides)
        return 0
    names = args.only or list(CONFIGURATIONS)
    report: dict = {"benchmark": "memory_one_sft_step_smollm2_135m", "batch": 4, "cutoff_len": 256,
                    "overrides": args.overrides, "cpu_count": os.cpu_count(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="tunery-memory-") as tmp:
        for name in names:
            workdir = Path(tmp) / name
            workdir.mkdir()
            keys = {**BASE_KEYS, **CONFIGURATIONS[name], "output_dir": str(workdir / "out")}
            print(f"[memory] {name} ...", file=sys.stderr, flush=True)
            report["runs"][name] = {"keys": CONFIGURATIONS[name],
                                    **run_configuration(keys, args.overrides, workdir)}
            print(f"[memory] {name}: {report['runs'][name]}", file=sys.stderr, flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
