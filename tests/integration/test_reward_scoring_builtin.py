"""A reward model on the built-in SmolLM2-135M-Instruct scores helpful answers above refusals.

examples/reward_model.yaml is trained as shipped (output_dir moved to a temporary
folder); then three questions that are not in its training data are scored, a
helpful answer against a rude refusal, with `tunery score` and through
`tunery api examples/score.yaml` (a child process, as a user starts it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from live import free_port, wait_until_healthy

from tunery.cli import main

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "Look it up yourself."),
    ("How many legs does a spider have?", "A spider has eight legs.", "I won't answer that."),
    ("What is 5 times 4?", "5 times 4 is 20.", "Figure it out on your own."),
]


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def pairs_of(scores: list[float]) -> list[tuple[float, float]]:
    return list(zip(scores[0::2], scores[1::2], strict=True))


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reward-model") / "out"
    assert main(["train", str(REPO_ROOT / "examples/reward_model.yaml"), f"output_dir={out}"]) == 0
    assert (out / "value_head.safetensors").is_file()
    return out


def test_tunery_score_ranks_helpful_answers_higher(reward_model, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"messages": chat(question, answer)}) + "\n"
                               for question, good, bad in QUESTIONS for answer in (good, bad)))
    command = ["score", str(REPO_ROOT / "examples/score.yaml"), f"adapter_name_or_path={reward_model}",
               "--file", str(answers), "--json"]
    assert main(command) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert len(scores) == 6
    for helpful, refusal in pairs_of(scores):
        assert helpful > refusal


def test_the_api_serves_the_reward_model(reward_model, tmp_path):
    port, key = free_port(), "sk-reward"
    env = {**os.environ, "API_KEY": key, "API_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO_ROOT / "src")}
    command = [sys.executable, "-m", "tunery", "api", "examples/score.yaml",
               f"adapter_name_or_path={reward_model}"]
    log = tmp_path / "server.log"
    with log.open("w") as output:  # a file, not a pipe nobody reads
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        wait_until_healthy(process, base, log)
        model = httpx.get(f"{base}/health").json()["model"]
        conversations = [chat(question, answer) for question, good, bad in QUESTIONS
                         for answer in (good, bad)]
        response = httpx.post(f"{base}/v1/score", headers=headers, timeout=300,
                              json={"model": model, "conversations": conversations})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "score.evaluation" and len(body["scores"]) == 6
        for helpful, refusal in pairs_of(body["scores"]):
            assert helpful > refusal
        refused = httpx.post(f"{base}/v1/chat/completions", headers=headers, timeout=60,
                             json={"model": model, "messages": conversations[0][:1]})
        assert refused.status_code == 400 and "/v1/score" in refused.json()["error"]["message"]
    finally:
        process.terminate()
        process.wait(timeout=60)
