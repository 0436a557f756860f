"""`tunery webchat`: the chat component alone on a page, for one model loaded at start.

``create_webchat`` builds the page around an engine (loading the config's model
when none is given); ``launch_webchat`` loads the model, serves the page until
interrupted and frees the model afterwards.
"""

import importlib.util
import logging

from tunery.config import RunConfig
from tunery.errors import TuneryError
from tunery.infer.engine import model_label
from tunery.webui import load_strings, t

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def require_gradio() -> None:
    """Say how to install Gradio instead of failing on an import deep inside."""
    if importlib.util.find_spec("gradio") is None:
        raise TuneryError(
            "`tunery webchat` needs gradio, which is not installed: pip install 'tunery[webui]'"
        )


def create_webchat(config: RunConfig, engine=None, locale: str = "en"):
    """The chat page (a ``gr.Blocks``) for ``engine``, or for the config's model loaded now."""
    require_gradio()
    import gradio as gr

    from tunery.infer.engine import create_engine
    from tunery.webui.chat import ChatDefaults, build_chat

    load_strings(locale)  # an unknown language is refused before the model loads
    engine = engine or create_engine(config)
    with gr.Blocks(title=t("chat.title", locale), analytics_enabled=False) as page:
        gr.Markdown(f"## {t('chat.title', locale)}\n{t('chat.model', locale, name=model_label(config))}")
        # the box shows the system prompt in use: default_system, else the template's own
        defaults = ChatDefaults.from_config(config, system=engine.template.default_system)
        build_chat(lambda: engine, defaults, locale)
    return page


def launch_webchat(config: RunConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                   share: bool = False, locale: str = "en") -> None:
    """Load the model and serve the chat page until interrupted (Ctrl+C); then free the model."""
    require_gradio()
    from tunery.infer.engine import create_engine

    if not 1 <= port <= 65535:
        raise TuneryError(f"The port must be between 1 and 65535, not {port}.")
    load_strings(locale)
    engine = create_engine(config)
    try:
        page = create_webchat(config, engine, locale)
        logger.info("Chat with '%s' at http://%s:%d", model_label(config), host, port)
        try:
            page.queue().launch(server_name=host, server_port=port, share=share, show_error=True)
        except OSError as err:  # Gradio's words for a port in use or an address it cannot bind
            raise TuneryError(
                f"Cannot serve the chat on {host}:{port} ({err}); choose another --port."
            ) from None
    finally:
        engine.close()
