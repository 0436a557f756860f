"""`tunery api` on the built-in SmolLM2-135M-Instruct, driven by the official `openai` client.

The server runs as the real command (`python -m tunery api`, a child process),
with its key and name from the environment, as a user would start it.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from live import free_port, wait_until_healthy

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-integration"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "server.log"
    env = {**os.environ, "API_KEY": KEY, "API_MODEL_NAME": "smol", "API_PORT": str(port),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    command = [sys.executable, "-m", "tunery", "api", "--model", "smollm2-135m-instruct", "max_new_tokens=24"]
    with log.open("w") as output:  # a file, not a pipe: a pipe nobody reads could fill up and block
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, base, log)
    yield process, base, log
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=60)


def test_the_builtin_model_answers_streamed_or_not(server):
    _, base, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=300)
    assert [model.id for model in client.models.list()] == ["smol"]
    reply = client.chat.completions.create(model="smol", messages=QUESTION, temperature=0)
    answer = reply.choices[0].message.content
    assert "Paris" in answer
    assert reply.usage.completion_tokens <= 24 and reply.usage.prompt_tokens > 10
    chunks = client.chat.completions.create(model="smol", messages=QUESTION, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == answer


def test_the_key_is_required_and_the_server_stops_gracefully(server):
    process, base, log = server
    refused = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        refused.models.list()
    process.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal so the parent sees how it ended
    assert process.wait(timeout=60) == -signal.SIGTERM
    assert "Application shutdown complete" in log.read_text()
