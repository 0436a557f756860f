"""The `tunery` command line: a thin front end over the library.

Each sub-command builds a RunConfig (YAML file plus ``key=value`` overrides)
and calls into the library. A ``TuneryError`` (bad input) is printed as one
sentence and exits with status 2; anything else is a bug and keeps its
traceback.
"""

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from tunery import __version__
from tunery.config import RunConfig, load_config
from tunery.config.schema import SECTIONS
from tunery.errors import TuneryError

SUMMARY_KEYS = ("train_loss", "train_runtime", "train_tokens_per_second", "eval_loss", "perplexity")
EPILOG_OVERRIDES = "Any config key can also be given as key=value after the config file."


def describe_keys(sections: Sequence[str]) -> str:
    """A help text listing each config key of ``sections`` with its description and default."""
    lines = []
    for name in sections:
        lines.append(f"\n{name} keys:")
        for key, field in SECTIONS[name].model_fields.items():
            default = field.get_default(call_default_factory=True)
            lines.append(f"  {key} (default: {default!r})")
            lines.append(f"      {field.description or ''}")
    return "\n".join(lines).lstrip()


def add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="fine-tune a model from a YAML config",
        description="Train a model. Example: tunery train examples/quickstart.yaml lora_rank=16",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["model", "data", "finetuning", "training"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML or JSON config (LLaMA-Factory files work as they are)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(handler=run_train)


def add_chat(commands) -> None:
    parser = commands.add_parser(
        "chat",
        help="chat with a model (and adapter) in the terminal",
        description="Streaming terminal chat. Type `clear` to reset the history, `exit` to quit.",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["generation"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="optional YAML config (model, template, generation keys)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--model", help="model path or built-in alias (model_name_or_path)")
    parser.add_argument("--adapter", action="append", help="adapter directory (repeatable)")
    parser.add_argument("--template", help="chat template name (default: the model's)")
    parser.add_argument("--system", help="system prompt")
    add_generation_flags(parser)
    parser.set_defaults(handler=run_chat)


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per generation setting (--temperature 0.3, --do-sample false, ...), from the config."""
    for key, field in SECTIONS["generation"].model_fields.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=f"gen_{key}", metavar="VALUE",
                            help=field.description)


def generation_overrides(args: argparse.Namespace) -> list[str]:
    return [f"{key}={getattr(args, f'gen_{key}')}" for key in SECTIONS["generation"].model_fields
            if getattr(args, f"gen_{key}", None) is not None]


def add_data(commands) -> None:
    parser = commands.add_parser("data", help="inspect datasets before training")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a config's datasets against its template and stage",
        description="Show valid and skipped rows with reasons, token-length percentiles, how many "
        "examples cutoff_len truncates, and the first examples with learned tokens marked.",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["data"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("config", help="YAML config naming the datasets, template and stage")
    check.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    check.add_argument("--json", action="store_true", help="print each encoded example as one JSON line")
    check.add_argument("--show", type=int, default=2, help="how many examples to render (default 2)")
    check.set_defaults(handler=run_data_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunery", description="Fine-tune large language models end to end."
    )
    parser.add_argument("--version", action="version", version=f"tunery {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(commands)
    add_chat(commands)
    add_data(commands)
    commands.add_parser("env", help="print versions and devices (for bug reports)").set_defaults(
        handler=run_env
    )
    commands.add_parser("version", help="print the version").set_defaults(
        handler=lambda _: print(f"tunery {__version__}")
    )
    return parser


def run_train(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)  # config errors first, before slow imports
    from tunery.train.run import run_training

    metrics = run_training(config)
    summary = ", ".join(f"{key} {value}" for key, value in metrics.items() if key in SUMMARY_KEYS)
    print(f"Done: {summary}. Results are in {config.training.output_dir}")


def chat_config(args: argparse.Namespace) -> RunConfig:
    """Flags win over the config file; chat never trains."""
    config_file, overrides = args.config, [*args.overrides, "do_train=false"]
    if config_file and "=" in config_file and not Path(config_file).exists():
        config_file, overrides = None, [config_file, *overrides]  # no file given: it was an override
    if args.model:
        overrides.append(f"model_name_or_path={args.model}")
    if args.adapter:
        overrides.append(f"adapter_name_or_path={','.join(args.adapter)}")
    if args.template:
        overrides.append(f"template={args.template}")
    overrides.extend(generation_overrides(args))
    config = load_config(config_file, overrides)
    if args.system is not None:  # set as-is: free text is not parsed as YAML ("Note: be brief")
        config.data.default_system = args.system
    return config


def run_chat(args: argparse.Namespace) -> None:
    from tunery.infer.terminal import chat_in_terminal

    chat_in_terminal(chat_config(args))


def run_data_check(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    from tunery.data.check import run_check
    from tunery.train.run import load_tokenizer_and_template

    tokenizer, template = load_tokenizer_and_template(config)
    run_check(config, tokenizer, template, as_json=args.json, show=args.show, color=sys.stdout.isatty())


def run_env(_: argparse.Namespace) -> None:
    from tunery.env import describe_environment

    print(describe_environment())


def quiet_library_deprecations() -> None:
    """peft/accelerate call a transformers method that v5 deprecated; the warning is not the user's to fix."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def show_progress_messages() -> None:
    """Tunery's own INFO messages (trainable parameters, where results were saved) go to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[tunery] %(message)s"))
    logger = logging.getLogger("tunery")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_deprecations()
    show_progress_messages()
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except TuneryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
