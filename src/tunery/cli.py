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
    add_predict(commands)
    add_compare(commands)
    add_data(commands)
    add_eval(commands)
    add_export(commands)
    add_api(commands)
    add_webchat(commands)
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

    training = config.training
    if training.do_train or training.do_eval or not config.evaluation.do_predict:
        metrics = run_training(config)
        summary = ", ".join(f"{key} {value}" for key, value in metrics.items() if key in SUMMARY_KEYS)
        print(f"Done: {summary}. Results are in {training.output_dir}")
    if config.evaluation.do_predict:  # LLaMA-Factory's do_predict: generate and score after training
        from tunery.infer.predict import after_training

        predict_and_report(after_training(config) if training.do_train else config)


def add_predict(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="generate for every eval example and score it (ROUGE, BLEU)",
        description="Batch prediction. Writes generated_predictions.jsonl and predict_results.json to "
        "output_dir. Example: tunery predict examples/predict.yaml",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["generation", "evaluation"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config naming the model, adapters and eval_dataset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> None:
    predict_and_report(load_config(args.config, [*args.overrides, "do_train=false", "do_predict=true"]))


def add_compare(commands) -> None:
    parser = commands.add_parser(
        "compare",
        help="predict with the base and the fine-tuned model; one report side by side",
        description="Runs the same prediction for the model without and with its adapters (or --base) "
        "and writes compare_report.md/.html with both metric sets, example outputs and the training loss "
        "curve to output_dir. Example: tunery compare examples/compare.yaml",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["generation", "evaluation"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config naming the model, its adapters and eval_dataset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--base", help="the model before fine-tuning (default: the config without adapters)")
    parser.add_argument("--run", help="training folder with trainer_log.jsonl (default: the adapter's)")
    parser.add_argument("--examples", type=int, default=5, help="example outputs shown (default 5)")
    parser.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> None:
    config = load_config(args.config, [*args.overrides, "do_train=false"])
    from tunery.infer.compare import compare, save_report, score_rows

    comparison = compare(config, base_model=args.base, run_dir=args.run)
    report = save_report(comparison, config.training.output_dir, args.examples)
    for name, before, after, change in score_rows(comparison):
        print(f"{name:>10}: {before:8.2f} -> {after:8.2f} ({change:+.2f})")
    print(f"Report: {report} (and compare_report.md beside it)")


def predict_and_report(config: RunConfig) -> None:
    from tunery.infer.predict import RESULTS_FILE, run_prediction

    metrics = run_prediction(config)
    shown = ", ".join(f"{key.removeprefix('predict_')} {value}" for key, value in metrics.items())
    print(f"Predicted: {shown}. See {Path(config.training.output_dir) / RESULTS_FILE}")


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


# ----- tunery eval (multiple-choice benchmarks) -----


def add_eval(commands) -> None:
    parser = commands.add_parser(
        "eval",
        help="score a model on a multiple-choice benchmark (MMLU / C-Eval / CMMLU style)",
        description="Few-shot multiple-choice evaluation: accuracy per subject and category, printed and "
        "written to results.json (in save_dir, default <output_dir>/eval_<task>). The model, adapters, "
        "template, cutoff_len, per_device_eval_batch_size and seed keys apply too. "
        "Example: tunery eval examples/eval_sample.yaml n_shot=3",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["evaluation"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="optional YAML config (model, adapters, template, task)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. task=sample_test")
    parser.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    config_file, overrides = args.config, [*args.overrides, "do_train=false"]
    if config_file and "=" in config_file and not Path(config_file).exists():
        config_file, overrides = None, [config_file, *overrides]  # no file given: it was an override
    config = load_config(config_file, overrides)
    from tunery.evaluation.benchmark import format_results, run_benchmark

    results, path = run_benchmark(config)
    print(format_results(results))
    print(f"Results are in {path}")


# ----- tunery export (merge adapters, shards, Modelfile, GGUF) -----


def add_export(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="merge adapters into the model; write safetensors, a Modelfile and optionally a GGUF file",
        description="Merge adapter_name_or_path into model_name_or_path and write the merged model to "
        "export_dir: safetensors shards of export_size GB, the tokenizer and chat template, an Ollama "
        "Modelfile and, with export_gguf: f16 | q8_0, a GGUF file for llama.cpp and Ollama. "
        "The dtype is infer_dtype, else the base checkpoint's own. "
        "Example: tunery export examples/export.yaml",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["export"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config (model, adapters, template, export keys)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. export_gguf=q8_0")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> None:
    config_file, overrides = args.config, [*args.overrides, "do_train=false"]
    if config_file and "=" in config_file and not Path(config_file).exists():
        config_file, overrides = None, [config_file, *overrides]  # no file given: it was an override
    config = load_config(config_file, overrides)
    from tunery.export import export_model

    result = export_model(config)
    print(f"Exported to {result.folder}: {', '.join(result.files)}")
    print(f"To run it in Ollama: cd {result.folder} && ollama create NAME -f Modelfile")


# ----- tunery api (OpenAI-compatible server) -----


def add_api(commands) -> None:
    parser = commands.add_parser(
        "api",
        help="serve a model (and adapter) with an OpenAI-compatible API",
        description="OpenAI-compatible HTTP API: GET /v1/models, POST /v1/chat/completions (streaming, "
        "tools), POST /v1/completions. Generation keys set the defaults a request's temperature, "
        "top_p and max_tokens override. Example: tunery api examples/api.yaml --port 8000",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["generation"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="optional YAML config (model, adapter, generation keys)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--model", help="model path or built-in alias (model_name_or_path)")
    parser.add_argument("--adapter", action="append", help="adapter directory (repeatable)")
    parser.add_argument("--template", help="chat template name (default: the model's)")
    parser.add_argument("--system", help="system prompt used when a request sends none")
    parser.add_argument("--host", help="address to listen on (default: $API_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: $API_PORT or 8000)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $API_KEY; none)")
    parser.add_argument("--model-name", help="the model id clients send (default: $API_MODEL_NAME, else "
                        "the last adapter's folder name, else the model's name)")
    add_generation_flags(parser)
    parser.set_defaults(handler=run_api)


def run_api(args: argparse.Namespace) -> None:
    config = chat_config(args)  # same model/adapter/template/system/generation flags as `tunery chat`
    from tunery.api.server import resolve_options, serve

    serve(config, resolve_options(config, args.host, args.port, args.api_key, args.model_name))


# ----- tunery webchat (a Gradio chat page for one model) -----


def add_webchat(commands) -> None:
    parser = commands.add_parser(
        "webchat",
        help="chat with a model (and adapter) in the browser (needs tunery[webui])",
        description="A Gradio chat page: streaming replies, system prompt, tools (JSON), generation "
        "sliders, clear history. Example: tunery webchat examples/webchat.yaml --port 7860",
        epilog=EPILOG_OVERRIDES + "\n\n" + describe_keys(["generation"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="optional YAML config (model, adapter, generation keys)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--model", help="model path or built-in alias (model_name_or_path)")
    parser.add_argument("--adapter", action="append", help="adapter directory (repeatable)")
    parser.add_argument("--template", help="chat template name (default: the model's)")
    parser.add_argument("--system", help="the system prompt the page starts with")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument("--lang", default="en", choices=["en", "zh"], help="page language (default: en)")
    add_generation_flags(parser)
    parser.set_defaults(handler=run_webchat)


def run_webchat(args: argparse.Namespace) -> None:
    config = chat_config(args)  # same model/adapter/template/system/generation flags as `tunery chat`
    from tunery.webui.webchat import launch_webchat

    launch_webchat(config, args.host, args.port, args.share, args.lang)


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
