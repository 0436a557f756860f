"""The `tunery` command line: a thin front end over the library.

Each sub-command builds a RunConfig (YAML file plus ``key=value`` overrides)
and calls into the library; the modules here group the commands by what the
user is doing (training, scoring, serving, exporting). A ``TuneryError`` (bad
input) is printed as one sentence and exits with status 2; Ctrl+C exits with
130; anything else is a bug and keeps its traceback.
"""

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from tunery import __version__
from tunery.cli.common import chat_config, describe_keys
from tunery.cli.expanding import add_expand
from tunery.cli.exporting import add_export
from tunery.cli.rewards import add_score
from tunery.cli.scoring import add_compare, add_eval, add_predict
from tunery.cli.serving import add_api, add_chat, add_webchat
from tunery.cli.training import add_data, add_train
from tunery.errors import TuneryError
from tunery.webui.command import add_webui

__all__ = ["build_parser", "chat_config", "describe_keys", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunery", description="Fine-tune large language models end to end."
    )
    parser.add_argument("--version", action="version", version=f"tunery {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train, add_chat, add_predict, add_compare, add_data, add_eval, add_score, add_export,
                add_expand, add_api, add_webchat, add_webui):
        add(commands)
    commands.add_parser("env", help="print versions and devices (for bug reports)").set_defaults(
        handler=run_env
    )
    commands.add_parser("version", help="print the version").set_defaults(
        handler=lambda _: print(f"tunery {__version__}")
    )
    return parser


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
