"""`tunery predict`, `tunery compare` and `tunery eval`: how good is the model?"""

import argparse
from pathlib import Path

from tunery.cli.common import add_command, config_from_args
from tunery.config import RunConfig


def add_predict(commands) -> None:
    add_command(
        commands, "predict", help="generate for every eval example and score it (ROUGE, BLEU)",
        description="Batch prediction. Writes generated_predictions.jsonl and predict_results.json to "
        "output_dir. Example: tunery predict examples/predict.yaml",
        sections=["generation", "evaluation"], handler=run_predict,
        config_help="YAML config naming the model, adapters and eval_dataset",
    )


def run_predict(args: argparse.Namespace) -> None:
    predict_and_report(config_from_args(args, "do_train=false", "do_predict=true"))


def predict_and_report(config: RunConfig) -> None:
    from tunery.infer.predict import RESULTS_FILE, run_prediction

    metrics = run_prediction(config)
    shown = ", ".join(f"{key.removeprefix('predict_')} {value}" for key, value in metrics.items())
    print(f"Predicted: {shown}. See {Path(config.training.output_dir) / RESULTS_FILE}")


def add_compare(commands) -> None:
    parser = add_command(
        commands, "compare", help="predict with the base and the fine-tuned model; one report side by side",
        description="Runs the same prediction for the model without and with its adapters (or --base) "
        "and writes compare_report.md/.html with both metric sets, example outputs and the training loss "
        "curve to output_dir. Example: tunery compare examples/compare.yaml",
        sections=["generation", "evaluation"], handler=run_compare,
        config_help="YAML config naming the model, its adapters and eval_dataset",
    )
    parser.add_argument("--base", help="the model before fine-tuning (default: the config without adapters)")
    parser.add_argument("--run", help="training folder with trainer_log.jsonl (default: the adapter's)")
    parser.add_argument("--examples", type=int, default=5, help="example outputs shown (default 5)")


def run_compare(args: argparse.Namespace) -> None:
    config = config_from_args(args, "do_train=false")
    from tunery.infer.compare import compare, save_report, score_rows

    comparison = compare(config, base_model=args.base, run_dir=args.run)
    report = save_report(comparison, config.training.output_dir, args.examples)
    for name, before, after, change in score_rows(comparison):
        print(f"{name:>10}: {before:8.2f} -> {after:8.2f} ({change:+.2f})")
    print(f"Report: {report} (and compare_report.md beside it)")


def add_eval(commands) -> None:
    add_command(
        commands, "eval", help="score a model on a multiple-choice benchmark (MMLU / C-Eval / CMMLU style)",
        description="Few-shot multiple-choice evaluation: accuracy per subject and category, printed and "
        "written to results.json (in save_dir, default <output_dir>/eval_<task>). The model, adapters, "
        "template, cutoff_len, per_device_eval_batch_size and seed keys apply too. "
        "Example: tunery eval examples/eval_sample.yaml n_shot=3",
        sections=["evaluation"], handler=run_eval, optional_config=True,
        config_help="optional YAML config (model, adapters, template, task)",
    )


def run_eval(args: argparse.Namespace) -> None:
    config = config_from_args(args, "do_train=false")
    from tunery.evaluation.benchmark import format_results, run_benchmark

    results, path = run_benchmark(config)
    print(format_results(results))
    print(f"Results are in {path}")
