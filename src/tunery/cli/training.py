"""`tunery train` and `tunery data check`."""

import argparse
import sys

from tunery.cli.common import add_command
from tunery.cli.scoring import predict_and_report
from tunery.config import load_config

SUMMARY_KEYS = ("train_loss", "train_runtime", "train_tokens_per_second", "eval_loss", "perplexity")


def add_train(commands) -> None:
    add_command(
        commands, "train", help="fine-tune a model from a YAML config",
        description="Train a model. Example: tunery train examples/quickstart.yaml lora_rank=16",
        sections=["model", "data", "finetuning", "training"], handler=run_train,
        config_help="YAML or JSON config (LLaMA-Factory files work as they are)",
    )


def run_train(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)  # config errors first, before slow imports
    from tunery.train.run import run_training

    training = config.training
    if training.do_train or training.do_eval or not config.evaluation.do_predict:
        metrics = run_training(config)
        summary = ", ".join(f"{key} {value}" for key, value in metrics.items() if key in SUMMARY_KEYS)
        print(f"Done: {summary}. Results are in {training.output_dir}")
    if config.evaluation.do_predict:  # LLaMA-Factory's do_predict: generate and score after training
        from tunery.infer.predict import after_training

        predict_and_report(after_training(config) if training.do_train else config)


def add_data(commands) -> None:
    parser = commands.add_parser("data", help="inspect datasets before training")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = add_command(
        actions, "check", help="validate a config's datasets against its template and stage",
        description="Show valid and skipped rows with reasons, token-length percentiles, how many "
        "examples cutoff_len truncates, and the first examples with learned tokens marked.",
        sections=["data"], handler=run_data_check,
        config_help="YAML config naming the datasets, template and stage",
    )
    check.add_argument("--json", action="store_true", help="print each encoded example as one JSON line")
    check.add_argument("--show", type=int, default=2, help="how many examples to render (default 2)")


def run_data_check(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    from tunery.data.check import run_check
    from tunery.train.run import load_tokenizer_and_template

    tokenizer, template = load_tokenizer_and_template(config)
    run_check(config, tokenizer, template, as_json=args.json, show=args.show, color=sys.stdout.isatty())
