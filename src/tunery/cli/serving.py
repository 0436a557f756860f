"""Talking to a model: `tunery chat` (terminal), `tunery api` (OpenAI-compatible), `tunery webchat`."""

import argparse

from tunery.cli.common import add_command, add_model_flags, chat_config


def add_chat(commands) -> None:
    parser = add_command(
        commands, "chat", help="chat with a model (and adapter) in the terminal",
        description="Streaming terminal chat. Type `clear` to reset the history, `exit` to quit.",
        sections=["generation"], handler=run_chat, optional_config=True,
        config_help="optional YAML config (model, template, generation keys)",
    )
    add_model_flags(parser)


def run_chat(args: argparse.Namespace) -> None:
    from tunery.infer.terminal import chat_in_terminal

    chat_in_terminal(chat_config(args))


def add_api(commands) -> None:
    parser = add_command(
        commands, "api", help="serve a model (and adapter) with an OpenAI-compatible API",
        description="OpenAI-compatible HTTP API: GET /v1/models, POST /v1/chat/completions (streaming, "
        "tools), POST /v1/completions; a reward model (stage rm) gets POST /v1/score instead. "
        "Generation keys set the defaults a request's temperature, "
        "top_p and max_tokens override. Example: tunery api examples/api.yaml --port 8000",
        sections=["generation"], handler=run_api, optional_config=True,
        config_help="optional YAML config (model, adapter, generation keys)",
    )
    add_model_flags(parser, system_help="system prompt used when a request sends none")
    parser.add_argument("--host", help="address to listen on (default: $API_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: $API_PORT or 8000)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $API_KEY; none)")
    parser.add_argument("--model-name", help="the model id clients send (default: $API_MODEL_NAME, else "
                        "the last adapter's folder name, else the model's name)")


def run_api(args: argparse.Namespace) -> None:
    config = chat_config(args)
    from tunery.api.server import resolve_options, serve

    serve(config, resolve_options(config, args.host, args.port, args.api_key, args.model_name))


def add_webchat(commands) -> None:
    parser = add_command(
        commands, "webchat", help="chat with a model (and adapter) in the browser (needs tunery[webui])",
        description="A Gradio chat page: streaming replies, system prompt, tools (JSON), generation "
        "sliders, clear history. Example: tunery webchat examples/webchat.yaml --port 7860",
        sections=["generation"], handler=run_webchat, optional_config=True,
        config_help="optional YAML config (model, adapter, generation keys)",
    )
    add_model_flags(parser, system_help="the system prompt the page starts with")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument("--lang", default="en", choices=["en", "zh"], help="page language (default: en)")


def run_webchat(args: argparse.Namespace) -> None:
    config = chat_config(args)
    from tunery.webui.webchat import launch_webchat

    launch_webchat(config, args.host, args.port, args.share, args.lang)
