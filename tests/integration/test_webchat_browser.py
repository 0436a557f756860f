"""`tunery webchat` in a real headless Chromium: type, press Enter, read the streamed reply, clear.

The page is served in-process on the tiny model (made to write only letters, so
its replies read the same in the page as in Python) and driven with Playwright
through Debian's Chromium (``apt-get install chromium``; ``scripts/setup.sh dev``
installs it). The test is skipped only when that browser cannot be launched.
"""


import pytest
from live import free_port, launched_chromium, save_letters_model
from playwright.sync_api import expect

from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.infer.engine import ChatEngine
from tunery.webui.webchat import create_webchat

WAIT_MS = 60_000  # a hang guard, not a timing assertion


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
    with launched_chromium() as chromium:
        yield chromium


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
