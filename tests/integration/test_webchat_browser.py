"""`tunery webchat` in a real headless Chromium: type, press Enter, read the streamed reply, clear.

The page is served in-process on the tiny model (made to write only letters, so
its replies read the same in the page as in Python) and driven with Playwright
through Debian's Chromium (``apt-get install chromium``; ``scripts/setup.sh dev``
installs it). The test is skipped only when that browser cannot be launched.
"""

import socket
import string
from pathlib import Path

import pytest
import torch
from playwright.sync_api import expect, sync_playwright
from train_tiny import save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.infer.engine import ChatEngine
from tunery.webui.webchat import create_webchat

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 60_000  # a hang guard, not a timing assertion


def save_letters_model(folder: Path) -> Path:
    """The tiny random model, able to write only the letters a-z: replies are readable in a page."""
    save_tiny_model(folder)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    other = torch.ones(model.config.vocab_size, dtype=torch.bool)
    other[tokenizer.convert_tokens_to_ids(list(string.ascii_lowercase))] = False
    with torch.no_grad():
        model.lm_head.weight[other] = 0  # every other token (eos included) scores 0, below the best letter
    model.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    folder = save_letters_model(tmp_path_factory.mktemp("webchat-browser") / "model")
    config = load_config(None, [f"model_name_or_path={folder}", "template=chatml", "do_train=false",
                                "do_sample=false", "max_new_tokens=16", "default_system=Be brief."])
    return ChatEngine(config)


@pytest.fixture(scope="module")
def url(engine):
    page = create_webchat(engine.config, engine)
    _, local_url, _ = page.queue().launch(server_name="127.0.0.1", server_port=free_port(),
                                          prevent_thread_lock=True, quiet=True)
    yield local_url
    page.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as driver:
        try:
            chromium = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        except Exception as err:  # no browser on this machine: say why instead of failing
            pytest.skip(f"cannot launch {CHROMIUM} (install it: apt-get install chromium): {err}")
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser, url):
    page = browser.new_page()
    page.goto(url)
    yield page
    page.close()


def send(tab, text: str, with_button: bool = False) -> None:
    box = tab.locator("#tunery-chat-message textarea")
    box.fill(text)
    if with_button:
        tab.locator("#tunery-chat-send").click()
    else:
        box.press("Enter")


def test_a_message_gets_the_greedy_reply_and_clear_empties_the_history(tab, engine):
    replies = tab.locator('#tunery-chat-history [data-testid="bot"]')
    first = engine.chat([Message(Role.USER, "hello")], system="Be brief.")
    send(tab, "hello")
    expect(replies).to_have_count(1, timeout=WAIT_MS)
    expect(replies.nth(0)).to_have_text(first, timeout=WAIT_MS)
    expect(tab.locator("#tunery-chat-message textarea")).to_have_value("")

    second = engine.chat([Message(Role.USER, "hello"), Message(Role.ASSISTANT, first),
                          Message(Role.USER, "and then")], system="Be brief.")
    send(tab, "and then", with_button=True)
    expect(replies).to_have_count(2, timeout=WAIT_MS)
    expect(replies.nth(1)).to_have_text(second, timeout=WAIT_MS)
    expect(tab.locator('#tunery-chat-history [data-testid="user"]')).to_have_count(2)
    rows = tab.locator("#tunery-chat-history .message-row")
    expect(rows).to_have_count(4)

    tab.locator("#tunery-chat-clear").click()
    expect(rows).to_have_count(0, timeout=WAIT_MS)


def test_bad_tools_json_shows_an_error_and_keeps_the_message(tab):
    tab.locator("#tunery-chat-tools textarea").fill('[{"name": "get_weather",}]')
    send(tab, "weather?")
    expect(tab.get_by_text("The tools box is not valid JSON").first).to_be_visible(timeout=WAIT_MS)
    expect(tab.locator("#tunery-chat-history .message-row")).to_have_count(0)
    expect(tab.locator("#tunery-chat-message textarea")).to_have_value("weather?")
