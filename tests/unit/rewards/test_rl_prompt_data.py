"""Data for stage ppo/grpo: prompt rows (ids up to the assistant header + the reference answer)."""

import json

import pytest
from train_tiny import save_tiny_model

from tunery.config import load_config
from tunery.data.check import check_data, format_report, iter_json_lines
from tunery.data.collate import collate_prompts, repeat_prompts, reward_columns
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.encode import conversation_from_json
from tunery.data.pipeline import prepare_data
from tunery.data.registry import BUILTIN_DIR
from tunery.errors import DataError
from tunery.rewards import load_rewards
from tunery.train.run import load_tokenizer_and_template


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("rl-data") / "model")


@pytest.fixture(autouse=True)
def tunery_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))


def prepared(model_dir, *overrides, stage="grpo"):
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml", f"stage={stage}",
                                "dataset=rl_count_demo", "cutoff_len=128", *overrides])
    tokenizer, template = load_tokenizer_and_template(config)
    return config, tokenizer, template, prepare_data(config, tokenizer, template)


def write_dataset(folder, name, rows, **info):
    (folder / f"{name}.json").write_text(json.dumps(rows))
    registry_file = folder / "dataset_info.json"
    registry = json.loads(registry_file.read_text()) if registry_file.exists() else {}
    registry[name] = {"file_name": f"{name}.json", **info}
    registry_file.write_text(json.dumps(registry))


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_demo_prompts_end_at_the_assistant_header(model_dir, stage):
    config, tokenizer, template, data = prepared(model_dir, "packing=true", stage=stage)
    assert not config.packing_enabled and not data.report.packed  # packing is off whatever the config says
    rows = json.loads((BUILTIN_DIR / "rl_count_demo.json").read_text())
    assert len(data.train) == len(rows) == 48 and data.report.datasets[0].skipped == 0
    assert sorted(data.train.column_names) == ["conversation", "input_ids", "reference"]
    first = data.train[0]
    expected = template.encode_prompt(tokenizer, Conversation([Message(Role.USER, rows[0]["instruction"])]))
    assert first["input_ids"] == expected
    text = tokenizer.decode(first["input_ids"])
    assert text.endswith(f"{rows[0]['instruction']}<|im_end|>\n<|im_start|>assistant\n")
    assert first["reference"] == rows[0]["output"]


def test_demo_references_give_item_count_its_n(model_dir):
    *_, data = prepared(model_dir)
    references = data.train["reference"]
    counts = {len(reference.splitlines()) for reference in references}
    assert counts == {2, 3, 4, 5}
    batch = collate_prompts(list(data.train))
    perfect = load_rewards(load_config(None, ["reward_funcs=item_count"]).rl).score(
        batch["prompts"], references, reward_columns(batch))
    assert perfect.total.tolist() == [1.0] * 48  # each reference is a perfect answer to its own prompt


def test_rows_without_an_answer_and_multi_turn_rows(model_dir, tmp_path):
    write_dataset(tmp_path, "alpaca", [
        {"instruction": "Count to three.", "input": "", "output": ""},
        {"instruction": "Add", "input": "2 and 2", "output": "4", "system": "Be brief."},
        {"instruction": "No output column at all"},
    ], columns={"prompt": "instruction", "query": "input", "response": "output", "system": "system"})
    write_dataset(tmp_path, "chat", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                           {"from": "human", "value": "Name a colour."}]},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ], formatting="sharegpt", columns={"messages": "conversations"})
    *_, data = prepared(model_dir, "dataset=alpaca,chat", f"dataset_dir={tmp_path}")
    assert data.train["reference"] == ["", "4", "", "", "4"]
    batch = collate_prompts(list(data.train))
    assert batch["prompts"] == ["Count to three.", "Add\n2 and 2", "No output column at all",
                                "Name a colour.", "2+2?"]
    assert conversation_from_json(batch["conversation"][1]).system == "Be brief."
    history = conversation_from_json(batch["conversation"][3]).messages
    assert [m.role for m in history] == [Role.USER, Role.ASSISTANT, Role.USER]
    assert history[1].content == "Hello!"


def test_prompts_longer_than_cutoff_len_are_skipped_and_counted(model_dir, tmp_path):
    write_dataset(tmp_path, "long", [{"instruction": "short", "output": "x"},
                                     {"instruction": "long " * 40, "output": "x"}])
    *_, data = prepared(model_dir, "dataset=long", f"dataset_dir={tmp_path}", "cutoff_len=64")
    report = data.report.datasets[0]
    assert (report.valid, report.skipped, len(data.train)) == (1, 1, 1)
    assert "longer than cutoff_len 64" in report.reasons[0]


def test_a_ranking_dataset_is_refused(model_dir):
    with pytest.raises(DataError, match=r"'preference_demo' is a ranking dataset.*'grpo'.*needs prompts"):
        prepared(model_dir, "dataset=preference_demo")


def test_collate_helpers_repeat_rows_for_groups(model_dir):
    *_, data = prepared(model_dir)
    batch = collate_prompts([data.train[0], data.train[1]])
    assert set(batch) == {"prompt_ids", "prompts", "reference", "conversation"}
    assert batch["prompt_ids"][0] == data.train[0]["input_ids"]
    assert set(reward_columns(batch)) == {"reference", "conversation"}
    grouped = repeat_prompts(batch, 3)
    assert grouped["reference"] == [batch["reference"][0]] * 3 + [batch["reference"][1]] * 3
    assert len(grouped["prompt_ids"]) == 6 and grouped["prompt_ids"][2] == batch["prompt_ids"][0]


def test_data_check_shows_prompts_with_their_reference(model_dir):
    config, tokenizer, template, data = prepared(model_dir)
    report = check_data(config, tokenizer, template, num_examples=1)
    assert report.nothing_learned == 0 and report.examples[0].reference == data.train[0]["reference"]
    text = format_report(report)
    assert "Example 1: " in text and "prompt tokens" in text and "Reference answer: apple" in text
    assert "Longer than cutoff_len" not in text and "[[" not in text
    line = json.loads(next(iter_json_lines(data)))
    assert line == {"input_ids": data.train[0]["input_ids"], "reference": data.train[0]["reference"]}
