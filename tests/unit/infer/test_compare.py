"""The before/after report: the base really is the model without adapters, files are complete."""

import json

import pytest
from train_tiny import run_config, save_tiny_model, write_config

from tunery.cli import main
from tunery.config import load_config
from tunery.errors import ConfigError
from tunery.infer.compare import base_config
from tunery.infer.predict import predict

QUESTIONS = [{"instruction": f"Question number {i}?", "output": f"Answer {i}."} for i in range(3)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model and a LoRA adapter trained on it (with its trainer_log.jsonl)."""
    root = tmp_path_factory.mktemp("compare")
    model_dir = save_tiny_model(root / "model")
    keys = run_config(model_dir, root / "adapter", learning_rate=5e-2, max_steps=4)
    assert main(["train", str(write_config(root / "train.yaml", keys))]) == 0
    data = root / "questions.json"
    data.write_text(json.dumps(QUESTIONS))
    return model_dir, root / "adapter", data


def compare_keys(model_dir, adapter, data, output_dir):
    return {"model_name_or_path": str(model_dir), "adapter_name_or_path": str(adapter), "template": "chatml",
            "eval_dataset": str(data), "output_dir": str(output_dir), "do_sample": False, "max_new_tokens": 6}


def read_predictions(path):
    return [json.loads(line)["predict"] for line in path.read_text().splitlines()]


def test_report_puts_base_and_tuned_side_by_side_with_the_loss_curve(trained, tmp_path, capsys):
    model_dir, adapter, data = trained
    keys = compare_keys(model_dir, adapter, data, tmp_path / "report")
    assert main(["compare", str(write_config(tmp_path / "c.yaml", keys)), "--examples", "2"]) == 0
    out = tmp_path / "report"
    tuned_config = load_config(None, [f"{k}={v}" for k, v in keys.items()])
    base_alone = predict(base_config(tuned_config, None)).predictions
    tuned_alone = predict(tuned_config).predictions
    assert read_predictions(out / "base_predictions.jsonl") == base_alone
    assert read_predictions(out / "tuned_predictions.jsonl") == tuned_alone
    assert base_alone != tuned_alone, "the trained adapter changes the answers"

    markdown = (out / "compare_report.md").read_text()
    assert "| ROUGE-1 |" in markdown and "| BLEU-4 |" in markdown
    assert "![training loss](training_loss.png)" in markdown and (out / "training_loss.png").is_file()
    assert markdown.count("### Example") == 2 and "Question number 0?" in markdown
    page = (out / "compare_report.html").read_text()
    assert 'src="data:image/png;base64,' in page and page.count("<h3>Example") == 2
    results = json.loads((out / "compare_results.json").read_text())
    assert set(results) == {"base", "tuned"} and "predict_rouge-l" in results["tuned"]
    assert "ROUGE-1:" in capsys.readouterr().out


def test_nothing_to_compare_without_adapters_or_base():
    with pytest.raises(ConfigError, match="--base"):
        base_config(load_config(None, []), None)
    config = base_config(load_config(None, ["finetuning_type=full", "model_name_or_path=out/full"]), "orig")
    assert config.model.model_name_or_path == "orig" and config.model.adapter_name_or_path is None


def test_a_run_folder_without_a_log_is_a_clear_error(trained, tmp_path, capsys):
    model_dir, adapter, data = trained
    keys = compare_keys(model_dir, adapter, data, tmp_path / "report")
    assert main(["compare", str(write_config(tmp_path / "c.yaml", keys)), "--run", str(tmp_path)]) == 2
    assert "trainer_log.jsonl" in capsys.readouterr().err
