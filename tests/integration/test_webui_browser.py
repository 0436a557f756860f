"""`tunery webui` in a real headless Chromium: the whole journey on the built-in model.

Switch the page to Chinese and back, pick the built-in model and the demo
dataset, preview the data and the command, train for a few steps as a separate
`tunery train` process while the progress bar and the loss curve update, reload
the page and find the run again, predict and read the ROUGE scores, load the
trained adapter in the chat and watch a reply stream in, unload it. A
screenshot of each tab is saved in the test's folder; with
``TUNERY_DOCS_SCREENSHOT=1`` the Train tab's is also written to
``docs/images/webui-train.png`` (the one the README shows).

Playwright drives Debian's Chromium (``apt-get install chromium``); the test is
skipped only when that browser cannot be launched.
"""

import os
import re
import time
from pathlib import Path

import pytest
from live import free_port, launched_chromium
from playwright.sync_api import Page, expect

from tunery.data.conversation import Message, Role

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_IMAGE = REPO_ROOT / "docs" / "images" / "webui-train.png"
WAIT_MS = 300_000  # a hang guard for slow machines, not a timing assertion
MODEL = "smollm2-135m-instruct"
DATASET = "identity_tunery"
DOCS = bool(os.environ.get("TUNERY_DOCS_SCREENSHOT"))
STEPS = 12 if DOCS else 4  # the README's picture gets a longer curve
TRAIN_SETTINGS = {"max-steps": STEPS, "cutoff-len": 128, "max-samples": 16, "logging-steps": 1,
                  "per-device-train-batch-size": 1, "gradient-accumulation-steps": 1}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The page's working directory: runs go to its saves/ folder."""
    folder = tmp_path_factory.mktemp("webui-browser")
    previous = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(previous)


@pytest.fixture(scope="module")
def app(workdir):
    from tunery.webui.app import create_app

    app = create_app("en", workdir / "jobs")
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                           quiet=True)
    app.url = url
    yield app
    app.close()


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as chromium:
        yield chromium


def fill(tab: Page, elem_id: str, value) -> None:
    box = tab.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")  # commits the value (Gradio reads it on change/blur)


def pick(tab: Page, elem_id: str, option: str) -> None:
    tab.locator(f"#{elem_id} input").click()
    tab.get_by_role("option", name=option, exact=True).click()
    tab.keyboard.press("Escape")


def shoot(tab: Page, folder: Path, name: str) -> Path:
    path = folder / f"webui-{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def test_the_whole_journey_in_a_browser(app, browser, workdir, tmp_path):
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.goto(app.url)
    tabs = tab.locator("button[role=tab]")
    expect(tabs).to_have_text(["Train", "Evaluate & Predict", "Chat", "Export"], timeout=60_000)

    switch_language(tab)
    run_dir = train(tab, tmp_path)
    reattach_after_reload(tab, app, run_dir)
    predict(tab, tmp_path)
    chat(tab, app, run_dir, tmp_path)
    tab.get_by_role("tab", name="Export").click()
    expect(tab.locator("#tunery-export-export-dir input, #tunery-export-export-dir textarea").first) \
        .to_have_value(re.compile(rf"saves/{MODEL}/lora/export-"))
    shoot(tab, tmp_path, "export")
    expect(tabs).to_have_text(["Train", "Evaluate & Predict", "Chat", "Export"])
    tab.close()


def switch_language(tab: Page) -> None:
    """Chinese relabels tabs, buttons, labels and hints at once; English comes back the same way."""
    pick(tab, "tunery-lang", "中文")
    expect(tab.locator("button[role=tab]")).to_have_text(["训练", "评估与预测", "对话", "导出"])
    expect(tab.locator("#tunery-train-start")).to_have_text("开始")
    expect(tab.locator("#tunery-train-dataset")).to_contain_text("数据集")
    expect(tab.locator("#tunery-train-learning-rate")).to_contain_text("峰值学习率")  # a hint
    expect(tab.locator("#tunery-top-model-name-or-path")).to_contain_text("模型")
    tab.get_by_role("tab", name="对话").click()
    expect(tab.locator("#tunery-chat-send")).to_have_text("发送")
    expect(tab.locator("#tunery-chat-status")).to_contain_text("未加载模型")
    tab.get_by_role("tab", name="训练").click()
    pick(tab, "tunery-lang", "English")
    expect(tab.locator("#tunery-train-start")).to_have_text("Start")
    expect(tab.locator("#tunery-train-learning-rate")).to_contain_text("Peak learning rate")


def train(tab: Page, shots: Path) -> str:
    """Preview the data and the command, start a few steps, watch the bar reach 100% and the curve."""
    pick(tab, "tunery-top-model-name-or-path", MODEL)
    pick(tab, "tunery-train-dataset", DATASET)
    for name, value in TRAIN_SETTINGS.items():
        fill(tab, f"tunery-train-{name}", value)
    tab.locator("#tunery-train-preview-data").click()
    preview = tab.locator("#tunery-train-data-preview")
    expect(preview.locator(".tunery-learned").first).to_be_visible(timeout=WAIT_MS)
    expect(preview).to_contain_text("Tunery Assistant")  # the identity answers are the learned text
    expect(preview.locator(".tunery-prompt").first).to_contain_text("<|im_start|>")
    expect(preview).to_contain_text(re.compile(r"Example 1: \d+ tokens — \d+ prompt, \d+ learned"))

    tab.locator("#tunery-train-preview").click()
    command = tab.locator("#tunery-train-command input, #tunery-train-command textarea").first
    expect(command).to_have_value(re.compile(rf"^tunery train saves/{MODEL}/lora/[\d-]+/training_args.yaml$"))
    run_dir = command.input_value().removeprefix("tunery train ").removesuffix("/training_args.yaml")
    shown_yaml = tab.locator("#tunery-train-yaml").inner_text()  # the editor draws the lines in view
    for line in (f"model_name_or_path: {MODEL}", f"- {DATASET}", "cutoff_len: 128", "max_samples: 16"):
        assert line in shown_yaml

    tab.locator("#tunery-train-start").click()
    expect(tab.locator("#tunery-progress[data-state=running]")).to_be_visible(timeout=60_000)
    expect(tab.locator("#tunery-train-loss [aria-roledescription='line mark']").first) \
        .to_be_visible(timeout=WAIT_MS)
    shoot(tab, shots, "train-live")
    if DOCS:
        save_docs_screenshot(tab)
    finished = tab.locator("#tunery-progress[data-state=finished]")
    expect(finished).to_be_visible(timeout=WAIT_MS)
    expect(finished).to_have_attribute("data-percentage", "100")
    expect(finished).to_contain_text(f"Step {STEPS}/{STEPS}")
    expect(tab.locator("#tunery-train-status")).to_contain_text("finished")
    expect(tab.locator("#tunery-train-log textarea")).to_have_value(re.compile("Done: train_loss"))
    assert (Path(run_dir) / "adapter_model.safetensors").is_file()
    written = (Path(run_dir) / "training_args.yaml").read_text()  # what the previewed command ran
    assert f"- {DATASET}" in written and f"max_steps: {STEPS}" in written and "logging_steps: 1" in written
    shoot(tab, shots, "train")
    return run_dir


def save_docs_screenshot(tab: Page) -> None:
    """The README's picture: the Train tab from the top bar to the loss curve, mid-run."""
    expect(tab.locator("#tunery-progress")).to_have_attribute("data-percentage", re.compile(r"^([6-9]\d)$"),
                                                              timeout=WAIT_MS)
    tab.get_by_role("button", name="Data preview").click()  # folded, so the curve fits in the picture
    tab.evaluate("window.scrollTo(0, 0)")
    box = tab.locator("#tunery-train-loss").bounding_box()
    DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(DOCS_IMAGE), full_page=True,
                   clip={"x": 0, "y": 0, "width": 1400, "height": box["y"] + box["height"] + 16})


def reattach_after_reload(tab: Page, app, run_dir: str) -> None:
    """A reloaded page finds the run in the job registry and shows it again."""
    tab.reload()
    finished = tab.locator("#tunery-progress[data-state=finished]")
    expect(finished).to_contain_text(f"Step {STEPS}/{STEPS}", timeout=60_000)
    expect(tab.locator("#tunery-train-status")).to_contain_text(run_dir)
    assert app.page.registry.latest("train").command == ["tunery", "train", f"{run_dir}/training_args.yaml"]


def predict(tab: Page, shots: Path) -> None:
    """Predict a few examples with the trained adapter and read the ROUGE scores."""
    pick_run(tab)
    tab.get_by_role("tab", name="Evaluate & Predict").click()
    pick(tab, "tunery-eval-eval-dataset", DATASET)
    for name, value in {"max-samples": 4, "max-new-tokens": 16, "temperature": 0}.items():
        fill(tab, f"tunery-eval-{name}", value)
    tab.locator("#tunery-eval-start").click()
    metrics = tab.locator("#tunery-eval-metrics")
    expect(metrics).to_contain_text("ROUGE-L", timeout=WAIT_MS)
    scores = dict(re.findall(r"(ROUGE-1|ROUGE-2|ROUGE-L|BLEU-4)\s+([\d.]+)", metrics.inner_text()))
    assert set(scores) == {"ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-4"}
    assert all(0 <= float(value) <= 100 for value in scores.values())
    expect(tab.locator("#tunery-eval-examples")).to_contain_text("Tunery")  # the references
    shoot(tab, shots, "eval")


def pick_run(tab: Page) -> None:
    """Refresh the saved runs and pick the one just trained (``lora/<timestamp>``)."""
    tab.locator("#tunery-top-refresh").click()
    run = tab.locator('[role=option][aria-label^="lora/"]:not([aria-label*="checkpoint"])')
    for _ in range(50):  # the list refreshes after the click: open it until the run is listed
        tab.locator("#tunery-top-adapter-name-or-path input").click()
        if run.count():
            break
        tab.keyboard.press("Escape")
        time.sleep(0.1)
    run.first.click()
    tab.keyboard.press("Escape")
    expect(tab.locator("#tunery-top-adapter-name-or-path")).to_contain_text(re.compile(r"lora/[\d-]+"))


def chat(tab: Page, app, run_dir: str, shots: Path) -> None:
    """Load the adapter, watch a greedy reply stream in, unload (which frees the model)."""
    tab.get_by_role("tab", name="Chat").click()
    tab.locator("#tunery-chat-load").click()
    status = tab.locator("#tunery-chat-status")
    expect(status).to_contain_text(f"Loaded: {MODEL} + {run_dir}", timeout=WAIT_MS)
    for name, value in (("max-new-tokens", 48), ("temperature", 0)):
        box = tab.locator(f"#tunery-chat-{name} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    system = tab.locator("#tunery-chat-system textarea").input_value()
    # the reply the page must show, computed beside it (greedy, so the same)
    expected = words(app.models.engine.chat([Message(Role.USER, "Who are you?")], system=system,
                                            max_new_tokens=48, do_sample=False))

    tab.locator("#tunery-chat-message textarea").fill("Who are you?")
    tab.locator("#tunery-chat-message textarea").press("Enter")
    reply, seen = tab.locator('#tunery-chat-history [data-testid="bot"]'), []
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline and (not seen or seen[-1] != expected):
        if reply.count():
            seen.append(words(reply.first.inner_text()))
        time.sleep(0.02)
    assert seen and seen[-1] == expected
    partial = {text for text in seen if text and text != seen[-1]}
    assert partial and all(expected.startswith(text) for text in partial), "the reply did not stream"
    shoot(tab, shots, "chat")

    tab.locator("#tunery-chat-unload").click()
    expect(tab.locator("#tunery-chat-status")).to_contain_text("No model loaded", timeout=60_000)
    assert app.models.engine is None


def words(text: str) -> str:
    """Text with its whitespace evened out (the page renders the reply as Markdown)."""
    return " ".join(text.split())
