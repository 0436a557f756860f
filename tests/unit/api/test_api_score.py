"""POST /v1/score on the tiny model: a reward model server scores, a chat server refuses to.

Scores are checked against the RewardScorer's own (the API adds nothing but the
wire format); refusals and validation answer in OpenAI's error shape.
"""

import pytest
import uvicorn
from fastapi.testclient import TestClient
from train_tiny import run_config, save_tiny_model, write_config

from tunery.api.app import create_app
from tunery.api.server import ServeOptions, serve
from tunery.cli import main
from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.infer.reward import RewardScorer

MODEL = "tiny-rm"
KEY = "score-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["The capital of France is Paris.", "No.", "Figure it out yourself."]
CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "What is 3 plus 3?"},
        {"role": "assistant", "content": "3 plus 3 is 6."}]


@pytest.fixture(scope="module")
def reward_config(tmp_path_factory):
    """The config of a tiny model with a 3-step rm adapter (LoRA + value_head.safetensors)."""
    folder = tmp_path_factory.mktemp("api-rm")
    model_dir = save_tiny_model(folder / "model")
    keys = run_config(model_dir, folder / "out", stage="rm", dataset="preference_demo",
                      per_device_train_batch_size=2, max_steps=3)
    assert main(["train", str(write_config(folder / "rm.yaml", keys))]) == 0
    return load_config(None, [f"model_name_or_path={model_dir}", "template=chatml",
                              f"adapter_name_or_path={folder / 'out'}", "do_train=false"])


@pytest.fixture(scope="module")
def scorer(reward_config):
    with RewardScorer(reward_config) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def client(scorer):
    return TestClient(create_app(scorer, MODEL, api_key=KEY), headers=AUTH)


def score(client, path="/v1/score", **body):
    return client.post(path, json={"model": MODEL, **body})


def assert_error(response, status: int, *phrases: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for phrase in phrases:
        assert phrase in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/evaluation"])
def test_texts_are_scored_as_the_scorer_scores_them(client, scorer, path):
    response = score(client, path, messages=TEXTS)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("scoreval-") and body["object"] == "score.evaluation"
    assert body["model"] == MODEL
    assert body["scores"] == pytest.approx(scorer.score_texts(TEXTS), abs=1e-6)
    limited = score(client, messages=TEXTS, max_length=3).json()["scores"]
    assert limited == pytest.approx(scorer.score_texts(TEXTS, max_length=3), abs=1e-6)
    assert limited != pytest.approx(body["scores"], abs=1e-6)


def test_conversations_are_rendered_with_the_chat_template(client, scorer):
    refusal = [*CHAT[:2], {"role": "assistant", "content": [{"type": "text", "text": "I won't."}]}]
    response = score(client, conversations=[CHAT, refusal])
    assert response.status_code == 200
    question = Message(Role.USER, "What is 3 plus 3?")
    expected = scorer.score_conversations([
        Conversation(messages=[question, Message(Role.ASSISTANT, "3 plus 3 is 6.")], system="Be kind."),
        Conversation(messages=[question, Message(Role.ASSISTANT, "I won't.")], system="Be kind."),
    ])
    assert response.json()["scores"] == pytest.approx(expected, abs=1e-6)


def test_the_key_and_the_model_name_are_checked(client):
    body = {"model": MODEL, "messages": ["hi"]}
    anonymous = client.post("/v1/score", json=body, headers={"Authorization": ""})
    assert_error(anonymous, 401, "API key")
    assert_error(score(client, model="other", messages=["hi"]), 404, "'other' does not exist", param="model")
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL


@pytest.mark.parametrize(("body", "phrase", "param"), [
    ({}, "either 'messages'", "messages"),
    ({"messages": ["hi"], "conversations": [CHAT]}, "not both or neither", "messages"),
    ({"messages": []}, "'messages' is empty", "messages"),
    ({"messages": [""]}, "Text 1 is empty", "messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages.0", "messages.0"),
    ({"messages": ["hi"], "max_length": 0}, "max_length", "max_length"),
    ({"conversations": []}, "'conversations' is empty", "conversations"),
    ({"conversations": [CHAT[:2]]}, "conversations[0] must end with the assistant message",
     "conversations[0]"),
    ({"conversations": [CHAT, [CHAT[0], CHAT[2]]]}, "conversations[1] needs a user message before",
     "conversations[1]"),
    ({"conversations": [CHAT, [CHAT[2], CHAT[2]]]}, "conversations[1][0] (assistant) must follow a user",
     "conversations[1][0].role"),
    ({"conversations": [[CHAT[1], CHAT[1], CHAT[2]]]}, "conversations[0][1] (user) follows a user message",
     "conversations[0][1].role"),
])
def test_bad_requests_get_a_400_naming_the_field(client, body, phrase, param):
    assert_error(score(client, **body), 400, phrase, param=param)


def test_a_reward_model_server_does_not_generate(client):
    requests = (("/v1/chat/completions", {"messages": CHAT[1:2]}), ("/v1/completions", {"prompt": "hi"}))
    for path, body in requests:
        response = client.post(path, json={"model": MODEL, **body})
        error = assert_error(response, 400, f"serves the reward model '{MODEL}'", "use POST /v1/score")
        assert error["code"] == "reward_model"


def test_a_chat_server_does_not_score(tiny_engine):
    chat_client = TestClient(create_app(tiny_engine, "tiny-chat"))
    response = chat_client.post("/v1/score", json={"model": "tiny-chat", "messages": ["hi"]})
    error = assert_error(response, 400, "'tiny-chat' is a chat model, not a reward model",
                         "value_head.safetensors")
    assert error["code"] == "not_a_reward_model"


def test_tunery_api_serves_a_reward_model_for_scoring(reward_config, scorer, monkeypatch):
    """`serve` loads a RewardScorer (not a ChatEngine) when the adapter holds a value head."""
    responses = []

    def run(app, **_):  # requests while "serving": serve() frees the model once uvicorn returns
        responses.append(TestClient(app).post("/v1/score", json={"model": MODEL, "messages": TEXTS}))

    monkeypatch.setattr(uvicorn, "run", run)
    serve(reward_config, ServeOptions(model_name=MODEL))
    assert responses[0].json()["scores"] == pytest.approx(scorer.score_texts(TEXTS), abs=1e-6)
