"""Shared fixtures for the API tests: one tiny engine, and a live uvicorn server on a free port."""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from train_tiny import save_tiny_model

from tunery.config import load_config
from tunery.infer.engine import ChatEngine

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> ChatEngine:
    """The tiny random Llama with the chatml template, greedy by default (deterministic replies)."""
    folder = save_tiny_model(tmp_path_factory.mktemp("api-tiny") / "model")
    config = load_config(None, [f"model_name_or_path={folder}", "template=chatml", "do_train=false",
                                "do_sample=false", f"max_new_tokens={MAX_NEW_TOKENS}"])
    return ChatEngine(config)


@pytest.fixture(scope="session")
def live_server():
    """``with live_server(app) as base_url:`` serves ``app`` on a free localhost port."""
    return serve_in_thread


@pytest.fixture(scope="session")
def wait_until():
    return poll_until


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields the base URL (``.../v1``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held open so nothing else takes it
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # guard against a hang, not a timing assertion
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def poll_until(condition, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` until it holds (a hang guard; tests assert on state, not on time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.01)
