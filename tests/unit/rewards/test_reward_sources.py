"""Reward sources of the RL stages on the tiny model: a stage-rm model (LoRA or full) or `tunery api`.

"Correct" means: the score ``RewardScorer`` (what ``tunery score`` and ``/v1/score`` use, itself
checked against the rm stage in tests/unit/infer) gives the prompt's turns followed by the
completion as the assistant's answer.
"""

import threading
import time

import pytest
import torch
import uvicorn
from live import free_port
from train_tiny import run_config, save_tiny_model, write_config

from tunery.api.app import create_app
from tunery.cli import main
from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.encode import conversation_to_json
from tunery.errors import ConfigError, ModelError, RewardError
from tunery.infer.reward import RewardScorer
from tunery.rewards import RewardSet
from tunery.train.reward_sources import (
    ApiRewardSource,
    CombinedSource,
    ModelRewardSource,
    api_base,
    create_reward_source,
)
from tunery.train.run import load_tokenizer_and_template

MODEL = "tiny-rm"
KEY = "reward-key"
SYSTEM = "Answer briefly."
PROMPTS = ["What is 3 plus 3?", "Name two fruits."]
COMPLETIONS = ["3 plus 3 is 6.", "I won't."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("sources") / "model")


def train_rm(model_dir, folder, **keys):
    config = run_config(model_dir, folder / "out", stage="rm", dataset="preference_demo",
                        per_device_train_batch_size=2, max_steps=2, **keys)
    assert main(["train", str(write_config(folder / "rm.yaml", config))]) == 0
    return folder / "out"


@pytest.fixture(scope="module")
def lora_rm(model_dir, tmp_path_factory):
    return train_rm(model_dir, tmp_path_factory.mktemp("lora-rm"))


@pytest.fixture(scope="module")
def full_rm(model_dir, tmp_path_factory):
    return train_rm(model_dir, tmp_path_factory.mktemp("full-rm"), finetuning_type="full",
                    learning_rate=1e-3)


def rl_config(model_dir, *overrides):
    return load_config(None, [f"model_name_or_path={model_dir}", "template=chatml", "stage=grpo",
                              "dataset=rl_count_demo", *overrides])


def conversations() -> list[Conversation]:
    return [Conversation([Message(Role.USER, prompt)], system=SYSTEM) for prompt in PROMPTS]


def expected_scores(scorer_config) -> list[float]:
    answered = [Conversation([*conv.messages, Message(Role.ASSISTANT, completion)], system=SYSTEM)
                for conv, completion in zip(conversations(), COMPLETIONS, strict=True)]
    with RewardScorer(scorer_config) as scorer:
        return scorer.score_conversations(answered)


@pytest.fixture(scope="module")
def lora_expected(model_dir, lora_rm):
    return expected_scores(load_config(None, [f"model_name_or_path={model_dir}", "template=chatml",
                                              f"adapter_name_or_path={lora_rm}"]))


def source_of(config):
    tokenizer, template = load_tokenizer_and_template(config)
    return create_reward_source(config, tokenizer, template)


def test_lora_reward_model_scores_prompt_and_completion_as_the_scorer(model_dir, lora_rm, lora_expected):
    source = source_of(rl_config(model_dir, f"reward_model={lora_rm}"))
    assert isinstance(source, ModelRewardSource) and source.names == ["reward_model"]
    as_objects = source.score(PROMPTS, COMPLETIONS, {"conversation": conversations()})
    as_json = source.score(PROMPTS, COMPLETIONS, {"conversation": [conversation_to_json(c) for c in
                                                                   conversations()]})
    assert as_objects.total.dtype == torch.float32
    assert as_objects.total.tolist() == pytest.approx(lora_expected, abs=1e-5)
    assert as_json.total.tolist() == pytest.approx(lora_expected, abs=1e-5)
    assert as_objects.per_function["reward_model"].tolist() == pytest.approx(lora_expected, abs=1e-5)
    without_system = source.score(PROMPTS, COMPLETIONS, {"reference": ["", ""]})  # the prompt is the turn
    assert without_system.total.tolist() != pytest.approx(lora_expected, abs=1e-5)
    source.close()


def test_full_reward_model_folder(model_dir, full_rm):
    expected = expected_scores(load_config(None, [f"model_name_or_path={full_rm}", "template=chatml"]))
    source = source_of(rl_config(model_dir, f"reward_model={full_rm}", "reward_model_type=full"))
    scores = source.score(PROMPTS, COMPLETIONS, {"conversation": conversations()})
    assert scores.total.tolist() == pytest.approx(expected, abs=1e-5)
    assert len(set(scores.total.tolist())) == 2  # a trained head tells the answers apart


def test_a_model_without_value_head_is_refused(model_dir):
    with pytest.raises(ModelError, match="not trained with stage rm"):
        source_of(rl_config(model_dir, f"reward_model={model_dir}", "reward_model_type=full"))


def test_reward_functions_add_to_the_model_score(model_dir, lora_rm, lora_expected):
    source = source_of(rl_config(model_dir, f"reward_model={lora_rm}", "reward_funcs=length_penalty:10",
                                 "reward_weights=[2]"))
    assert isinstance(source, CombinedSource) and source.names == ["reward_model", "length_penalty"]
    scores = source.score(PROMPTS, COMPLETIONS, {"conversation": conversations()})
    penalty = [-(14 - 10) / 10, 0.0]
    assert scores.per_function["length_penalty"].tolist() == pytest.approx(penalty)
    total = [score + 2 * p for score, p in zip(lora_expected, penalty, strict=True)]
    assert scores.total.tolist() == pytest.approx(total, abs=1e-5)


def test_which_source_a_config_gets(model_dir):
    assert isinstance(source_of(rl_config(model_dir, "reward_funcs=item_count")), RewardSet)
    assert source_of(load_config(None, [f"model_name_or_path={model_dir}", "template=chatml"])) is None
    with pytest.raises(ConfigError, match="stage grpo needs reward_funcs or reward_model"):
        source_of(rl_config(model_dir))
    with pytest.raises(ConfigError, match="reward_weights weight reward_funcs"):
        source_of(rl_config(model_dir, "reward_model=http://127.0.0.1:9", "reward_model_type=api",
                            "reward_weights=[1]"))


@pytest.fixture(scope="module")
def api_server(model_dir, lora_rm):
    """`tunery api`'s app on the LoRA reward model, served by uvicorn on a free port (a thread)."""
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml",
                                f"adapter_name_or_path={lora_rm}"])
    scorer = RewardScorer(config)
    port = free_port()
    app = create_app(scorer, MODEL, api_key=KEY)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()
    scorer.close()


def test_api_reward_source_scores_through_v1_score(api_server, model_dir, lora_expected, monkeypatch):
    monkeypatch.setenv("API_KEY", KEY)
    source = source_of(rl_config(model_dir, f"reward_model={api_server}/v1", "reward_model_type=api"))
    assert isinstance(source, ApiRewardSource) and source.model_name == MODEL
    scores = source.score(PROMPTS, COMPLETIONS, {"conversation": conversations(), "reference": ["6", ""]})
    assert scores.total.tolist() == pytest.approx(lora_expected, abs=1e-5)
    assert scores.per_function["reward_model"].tolist() == pytest.approx(lora_expected, abs=1e-5)
    tool_turn = Conversation([Message(Role.USER, "x"), Message(Role.FUNCTION_CALL, "{}"),
                              Message(Role.OBSERVATION, "y")])
    with pytest.raises(RewardError, match="'function_call' turn"):
        source.score(["y"], ["z"], {"conversation": [tool_turn]})
    source.close()


def test_api_errors_are_clear(api_server, model_dir, monkeypatch):
    monkeypatch.setenv("API_KEY", "wrong")
    with pytest.raises(ConfigError, match=r"scoring API at .* answered 401: .*Set API_KEY"):
        ApiRewardSource(api_server)
    monkeypatch.delenv("API_KEY")
    with pytest.raises(ConfigError, match=r"cannot reach the scoring API at http://127\.0\.0\.1:9 "):
        ApiRewardSource("http://127.0.0.1:9/v1/score")


def test_api_addresses_are_normalised():
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/score",
                "http://h:8000/v1/score/evaluation"):
        assert api_base(url) == "http://h:8000"
