"""What every sub-command shares: help generated from the config schema, config from arguments.

A command takes an (often optional) YAML config plus ``key=value`` overrides;
commands that load a model for talking to it also take ``--model``,
``--adapter``, ``--template``, ``--system`` and one flag per generation setting.
"""

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from tunery.config import RunConfig, load_config
from tunery.config.schema import SECTIONS

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


def add_command(
    commands, name: str, *, help: str, description: str, sections: Sequence[str],
    handler: Callable[[argparse.Namespace], None], config_help: str, optional_config: bool = False,
) -> argparse.ArgumentParser:
    """A sub-command taking ``CONFIG [key=value ...]``, with the keys of ``sections`` in its help."""
    parser = commands.add_parser(
        name, help=help, description=description,
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(sections),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?" if optional_config else None, help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(handler=handler)
    return parser


def add_model_flags(parser: argparse.ArgumentParser, system_help: str = "system prompt") -> None:
    """--model, --adapter, --template, --system and the generation flags (chat, api, web chat)."""
    parser.add_argument("--model", help="model path or built-in alias (model_name_or_path)")
    parser.add_argument("--adapter", action="append", help="adapter directory (repeatable)")
    parser.add_argument("--template", help="chat template name (default: the model's)")
    parser.add_argument("--system", help=system_help)
    add_generation_flags(parser)


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per generation setting (--temperature 0.3, --do-sample false, ...), from the config."""
    for key, field in SECTIONS["generation"].model_fields.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=f"gen_{key}", metavar="VALUE",
                            help=field.description)


def generation_overrides(args: argparse.Namespace) -> list[str]:
    return [f"{key}={getattr(args, f'gen_{key}')}" for key in SECTIONS["generation"].model_fields
            if getattr(args, f"gen_{key}", None) is not None]


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The model flags as overrides (absent on commands without them)."""
    overrides = []
    if getattr(args, "model", None):
        overrides.append(f"model_name_or_path={args.model}")
    if getattr(args, "adapter", None):
        overrides.append(f"adapter_name_or_path={','.join(args.adapter)}")
    if getattr(args, "template", None):
        overrides.append(f"template={args.template}")
    return overrides + generation_overrides(args)


def config_from_args(args: argparse.Namespace, *fixed: str) -> RunConfig:
    """The config file (optional: a first argument holding '=' is an override) + overrides + flags.

    ``fixed`` overrides come last (``do_train=false`` for commands that never train).
    """
    config_file, overrides = args.config, list(args.overrides)
    if config_file and "=" in config_file and not Path(config_file).exists():
        config_file, overrides = None, [config_file, *overrides]
    config = load_config(config_file, [*overrides, *flag_overrides(args), *fixed])
    if getattr(args, "system", None) is not None:  # as-is: free text is not parsed as YAML ("Note: x")
        config.data.default_system = args.system
    return config


def chat_config(args: argparse.Namespace) -> RunConfig:
    """Flags win over the config file; chatting never trains."""
    return config_from_args(args, "do_train=false")
