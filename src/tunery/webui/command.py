"""`tunery webui [--host H] [--port P] [--share] [--username U --password P] [--lang en|zh]`.

``add_webui(commands)`` adds the sub-command to an argparse sub-parser set;
``run_webui(args)`` serves the page until interrupted. A page reachable from
other machines (``--share``, or a host other than this machine's loopback)
needs ``--username`` and ``--password``: its forms start processes and read
local paths. Running jobs keep running when the server stops; a new server
finds them again.
"""

import argparse
import os
import sys

from tunery.errors import TuneryError
from tunery.webui import LANGUAGES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
LOCAL_HOSTS = ("localhost", "::1")


def add_webui(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "webui",
        help="the whole workflow in the browser: train, evaluate, chat, export (needs tunery[webui])",
        description="A Gradio web UI: pick a model, method and dataset, start training as a separate "
        "`tunery train` process with a live progress bar, loss curve and log, then predict, chat and "
        "export. Example: tunery webui --port 7860 --lang zh",
    )
    add_webui_flags(parser)
    parser.set_defaults(handler=run_webui)
    return parser


def add_webui_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (needs --username and --password)")
    # from the environment too, so the password need not show in the process list
    parser.add_argument("--username", default=os.environ.get("TUNERY_WEBUI_USERNAME"),
                        help="login name the page asks for (default: $TUNERY_WEBUI_USERNAME)")
    parser.add_argument("--password", default=os.environ.get("TUNERY_WEBUI_PASSWORD"),
                        help="password the page asks for (default: $TUNERY_WEBUI_PASSWORD)")
    parser.add_argument("--lang", default="en", choices=LANGUAGES, help="page language (default: en)")


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS or host.startswith("127.")


def check_access(host: str, share: bool, username: str | None, password: str | None) -> tuple | None:
    """The login to require, or None for a page only this machine can reach; refuses an open page."""
    if bool(username) != bool(password):
        raise TuneryError("Give both --username and --password, or neither.")
    if username:
        return (username, password)
    if share or not is_local(host):
        where = "--share" if share else f"--host {host}"
        raise TuneryError(
            f"{where} makes the web UI reachable from other machines, and its forms start jobs and read "
            "local paths: add --username NAME --password SECRET (or serve on 127.0.0.1)."
        )
    return None


def run_webui(args: argparse.Namespace) -> None:
    auth = check_access(args.host, args.share, args.username, args.password)
    if not 1 <= args.port <= 65535:
        raise TuneryError(f"The port must be between 1 and 65535, not {args.port}.")
    from tunery.webui.webchat import require_gradio

    require_gradio()
    from tunery.webui.app import create_app

    app = create_app(args.lang)
    print(f"Tunery web UI at http://{args.host}:{args.port}", file=sys.stderr)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, show_error=True)
    except OSError as err:  # Gradio's words for a port in use or an address it cannot bind
        raise TuneryError(
            f"Cannot serve the web UI on {args.host}:{args.port} ({err}); choose another --port."
        ) from None
    finally:
        app.models.unload()


def main(argv: list[str] | None = None) -> int:
    """``python -m tunery.webui.command [flags]``: the same as `tunery webui`."""
    parser = argparse.ArgumentParser(prog="tunery webui")
    add_webui_flags(parser)
    args = parser.parse_args(argv)
    try:
        run_webui(args)
    except TuneryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
