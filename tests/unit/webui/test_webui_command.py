"""`tunery webui` flags: an open page is refused, and the served page reads no file off the disk.

Also checks that every UI string the code looks up exists in both locale files.
"""

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tunery.errors import TuneryError
from tunery.webui.command import check_access, main

PREFIXES = "app|top|tab|form|error|train|eval|chat|export|preview|progress|state|kind|field|info"
WEBUI_SOURCES = Path(__file__).resolve().parents[3] / "src" / "tunery" / "webui"


def test_only_this_machine_may_reach_a_page_without_a_password():
    assert check_access("127.0.0.1", share=False, username=None, password=None) is None
    assert check_access("localhost", share=False, username=None, password=None) is None
    with pytest.raises(TuneryError, match=r"--share.*--username NAME --password SECRET"):
        check_access("127.0.0.1", share=True, username=None, password=None)
    with pytest.raises(TuneryError, match=r"--host 0\.0\.0\.0"):
        check_access("0.0.0.0", share=False, username=None, password=None)
    with pytest.raises(TuneryError, match="both --username and --password"):
        check_access("0.0.0.0", share=False, username="me", password=None)
    assert check_access("0.0.0.0", share=True, username="me", password="secret") == ("me", "secret")


def test_the_command_refuses_an_open_page_before_serving_anything(capsys):
    assert main(["--host", "0.0.0.0"]) == 2
    assert "add --username NAME --password SECRET" in capsys.readouterr().err
    assert main(["--port", "70000"]) == 2
    assert "between 1 and 65535" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_of(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_page_serves_no_file_from_the_disk(tmp_path, monkeypatch):
    from tunery.webui.app import create_app

    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for visitors")
    app = create_app("en", tmp_path / "jobs")
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                           quiet=True)
    try:
        assert status_of(url)[0] == 200
        for path in (f"gradio_api/file={secret}", "gradio_api/file=secret.txt", f"file={secret}",
                     "gradio_api/file=/etc/hostname"):
            code, body = status_of(url.rstrip("/") + "/" + path)
            assert code in (403, 404) and b"not for visitors" not in body, path
    finally:
        app.close()


def test_every_string_the_code_looks_up_exists_in_every_language():
    used = set()
    for source in WEBUI_SOURCES.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        used |= set(re.findall(rf'"((?:{PREFIXES})\.[a-z_]+)"', text))
    used |= {f"state.{state}" for state in ("running", "finished", "failed", "aborted")}
    used |= {f"kind.{kind}" for kind in ("text", "conversation", "ranking", "kto")}
    used |= {f"train.{name}" for name in ("preview", "save", "load", "start", "abort")}
    assert len(used) > 100
    for lang in ("en", "zh"):
        strings = json.loads((WEBUI_SOURCES / "locales" / f"{lang}.json").read_text(encoding="utf-8"))
        assert sorted(used - set(strings)) == [], lang
    english = json.loads((WEBUI_SOURCES / "locales" / "en.json").read_text(encoding="utf-8"))
    chinese = json.loads((WEBUI_SOURCES / "locales" / "zh.json").read_text(encoding="utf-8"))
    for key, text in english.items():  # the same placeholders, so no message fails to format
        assert set(re.findall(r"{(\w+)}", text)) == set(re.findall(r"{(\w+)}", chinese[key])), key
