"""What tests of live servers and pages share: a free port, a health wait, Chromium, a readable model."""

import socket
import string
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from train_tiny import save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, base: str, log: Path, timeout: float = 300) -> None:
    """Poll ``base``/health until it answers 200 (a hang guard: the first use may convert the model)."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.5)


@contextmanager
def launched_chromium() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright; the test is skipped, saying why, without it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        try:
            chromium = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        except Exception as err:  # no browser on this machine: say why instead of failing
            pytest.skip(f"cannot launch {CHROMIUM} (install it: apt-get install chromium): {err}")
        try:
            yield chromium
        finally:
            chromium.close()


def save_letters_model(folder: Path) -> Path:
    """The tiny random model, able to write only the letters a-z: replies are readable in a page."""
    save_tiny_model(folder)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    other = torch.ones(model.config.vocab_size, dtype=torch.bool)
    other[tokenizer.convert_tokens_to_ids(list(string.ascii_lowercase))] = False
    with torch.no_grad():
        model.lm_head.weight[other] = 0  # every other token (eos included) scores 0, below some letter
    model.save_pretrained(folder)
    return folder
