"""`tunery eval` on the built-in SmolLM2-135M-Instruct and the shipped sample task, end to end."""

import json

import pytest

from tunery.cli import main
from tunery.evaluation.taskdata import load_task

pytestmark = pytest.mark.integration


def test_eval_of_the_sample_task_writes_scores_per_subject_and_category(tmp_path, capsys):
    assert main(["eval", "examples/eval_sample.yaml", f"save_dir={tmp_path}", "n_shot=2"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    task = load_task("sample_test", "builtin", n_shot=2)
    assert (results["task"], results["split"], results["n_shot"], results["template"]) == (
        "sample", "test", 2, "smollm2")
    assert list(results["subjects"]) == [subject.key for subject in task.subjects]
    for subject in task.subjects:
        entry = results["subjects"][subject.key]
        assert entry["total"] == len(subject.questions) == len(entry["predictions"])
        assert entry["correct"] == sum(p == q.answer for p, q in zip(entry["predictions"], subject.questions,
                                                                     strict=True))
    categories = results["categories"]
    assert list(categories) == ["STEM", "Social Sciences", "Humanities", "Average"]
    assert categories["STEM"]["total"] == 20 and categories["Average"]["total"] == task.question_count
    assert all(0.0 <= entry["accuracy"] <= 1.0 for entry in categories.values())
    assert results["accuracy"] == categories["Average"]["accuracy"]
    out = capsys.readouterr().out
    assert "World Geography" in out and "Average" in out and str(tmp_path / "results.json") in out
