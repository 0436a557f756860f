"""Batch prediction on the tiny model: files written, order kept, batching changes nothing."""

import json

import pytest
from train_tiny import run_config, save_tiny_model, write_config

from tunery.cli import main
from tunery.config import load_config
from tunery.errors import ConfigError, DataError
from tunery.infer.engine import ChatEngine
from tunery.infer.predict import PREDICTIONS_FILE, RESULTS_FILE, after_training, predict, run_prediction

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "hi"},
    {"instruction": "Count to three, slowly and with a long preamble", "input": "please", "output": "1 2 3"},
    {"instruction": "Name a colour", "input": "", "output": "blue"},
    {"instruction": "A question without an answer", "input": ""},  # nothing to score against: skipped
    {"instruction": "What is 2+2?", "input": "", "output": "4"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(ROWS))
    return path


def predict_config(model_dir, data_file, output_dir, *extra):
    return load_config(None, [
        f"model_name_or_path={model_dir}", "template=chatml", f"eval_dataset={data_file}",
        f"output_dir={output_dir}", "do_sample=false", "max_new_tokens=5", "per_device_eval_batch_size=2",
        "do_train=false", *extra,
    ])


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prediction_writes_one_line_per_row_in_order_and_the_scores(model_dir, data_file, tmp_path):
    metrics = run_prediction(predict_config(model_dir, data_file, tmp_path / "out"))
    lines = read_lines(tmp_path / "out" / PREDICTIONS_FILE)
    assert [line["label"] for line in lines] == ["hi", "1 2 3", "blue", "4"]
    assert lines[0]["prompt"].endswith("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n")
    assert all(isinstance(line["predict"], str) for line in lines)
    saved = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert saved == metrics
    for key in ("predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_bleu-4"):
        assert 0 <= saved[key] <= 100
    assert saved["predict_samples"] == 4 and saved["predict_samples_per_second"] > 0


def test_batches_of_several_prompts_give_the_same_text_as_one_at_a_time(model_dir, data_file, tmp_path):
    config = predict_config(model_dir, data_file, tmp_path)
    engine = ChatEngine(config)
    batched = predict(config, engine).predictions
    config.training.per_device_eval_batch_size = 1
    assert predict(config, engine).predictions == batched


def test_long_prompts_keep_their_end(model_dir, data_file, tmp_path):
    config = predict_config(model_dir, data_file, tmp_path, "cutoff_len=12")
    run = predict(config)
    assert all(prompt.endswith("<|im_start|>assistant\n") for prompt in run.prompts)
    assert max(len(prompt.encode()) for prompt in run.prompts) < 60  # byte-level tokens, specials count 1


def test_no_dataset_and_no_usable_rows_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="eval_dataset"):
        predict(load_config(None, [f"model_name_or_path={model_dir}", "template=chatml"]))
    empty = tmp_path / "bad.json"
    empty.write_text(json.dumps([{"instruction": "", "output": ""}]))
    with pytest.raises(DataError, match="No usable rows"):
        predict(predict_config(model_dir, empty, tmp_path))


def test_after_training_predicts_with_the_saved_weights():
    lora = load_config(None, ["adapter_name_or_path=a,b", "output_dir=out/run"])
    assert after_training(lora).model.adapter_name_or_path == ["a", "out/run"]
    full = load_config(None, ["finetuning_type=full", "output_dir=out/full"])
    assert after_training(full).model.model_name_or_path == "out/full"


def test_train_with_do_predict_trains_then_predicts_with_the_adapter(model_dir, data_file, tmp_path, capsys):
    keys = run_config(model_dir, tmp_path / "run", max_steps=2, do_predict=True, eval_dataset=str(data_file),
                      max_new_tokens=4, do_sample=False)
    assert main(["train", str(write_config(tmp_path / "run.yaml", keys))]) == 0
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert len(read_lines(tmp_path / "run" / PREDICTIONS_FILE)) == len(ROWS) - 1
    assert "Predicted: rouge-1" in capsys.readouterr().out


def test_predict_command_reports_a_missing_dataset_as_one_line(model_dir, tmp_path, capsys):
    config = write_config(tmp_path / "p.yaml", {"model_name_or_path": str(model_dir), "template": "chatml",
                                                 "eval_dataset": "no_such_set", "dataset_dir": "builtin"})
    assert main(["predict", str(config)]) == 2
    assert "no_such_set" in capsys.readouterr().err
