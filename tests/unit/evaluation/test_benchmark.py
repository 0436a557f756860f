"""`tunery eval`: prompts as LLaMA-Factory builds them, letter-logit choice, aggregation, task errors."""

import csv
import json
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_tiny import save_tiny_model

from tunery.cli import main
from tunery.config import load_config
from tunery.errors import DataError
from tunery.evaluation.benchmark import (
    PROMPT_STYLES,
    ChoiceScorer,
    PromptEncoder,
    build_messages,
    category_scores,
    choice_token_ids,
    display_width,
    format_results,
    predict_subject,
)
from tunery.evaluation.convert import convert
from tunery.evaluation.taskdata import Question, Subject, load_task
from tunery.train.run import load_tokenizer_and_template

EN = PROMPT_STYLES["en"]
SUM = Question("What is 2 + 2?", ("3", "4", "5", "6"), "B")
PLANET = Question("Which planet do we live on?", ("Mars", "Venus", "Earth", "Jupiter"), "C")
TARGET = Question("What is 5 + 3?", ("8", "7", "9", "53"), "A")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer_and_template(tiny_model):
    config = load_config(None, [f"model_name_or_path={tiny_model}", "template=chatml"])
    return load_tokenizer_and_template(config)


def encoder_for(tokenizer_and_template, cutoff_len=4096, n_shot=5, style=EN) -> PromptEncoder:
    tokenizer, template = tokenizer_and_template
    return PromptEncoder(tokenizer, template, style, cutoff_len, n_shot, seed=42)


def write_task(root: Path, name="quiz", subjects=None, splits=("train", "test")) -> Path:
    """A task folder with two STEM subjects and one Humanities subject, 3 questions each."""
    subjects = subjects or {"math": ("Math", "STEM"), "physics": ("Physics", "STEM"),
                            "poetry": ("Poetry", "Humanities")}
    folder = root / name
    folder.mkdir(parents=True)
    mapping = {key: {"name": title, "category": category} for key, (title, category) in subjects.items()}
    (folder / "mapping.json").write_text(json.dumps(mapping))
    for split in splits:
        for key in subjects:
            rows = [[f"{key} {split} question {i}?", "one", "two", "three", "four", "ABCD"[i % 4]]
                    for i in range(3)]
            write_rows(folder / split / f"{key}.csv", rows)
    return folder


def write_rows(path: Path, rows: list[list[str]], header=("question", "A", "B", "C", "D", "answer")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# ----- prompts ---------------------------------------------------------------------------------------------


def test_prompt_is_llamafactory_few_shot_conversation_in_the_chat_template(tokenizer_and_template):
    tokenizer, _ = tokenizer_and_template
    encoder = encoder_for(tokenizer_and_template)
    ids = encoder.encode(build_messages(TARGET, [SUM, PLANET], "Arithmetic", EN))
    # the text LLaMA-Factory 0.9.5's evaluator renders (checked token for token with the smollm2, llama3
    # and qwen templates): the task description opens the first user turn, not the system prompt
    assert tokenizer.decode(ids) == (
        "<|im_start|>user\nThe following are multiple choice questions (with answers) about Arithmetic.\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:<|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n"
        "<|im_start|>user\nWhich planet do we live on?\nA. Mars\nB. Venus\nC. Earth\nD. Jupiter\n"
        "Answer:<|im_end|>\n<|im_start|>assistant\nC<|im_end|>\n"
        "<|im_start|>user\nWhat is 5 + 3?\nA. 8\nB. 7\nC. 9\nD. 53\nAnswer:<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chinese_prompt_wording():
    messages = build_messages(TARGET, [], "小学数学", PROMPT_STYLES["zh"])
    assert [m.content for m in messages] == [
        "以下是中国关于小学数学考试的单项选择题，请选出其中的正确答案。\n\n"
        "What is 5 + 3?\nA. 8\nB. 7\nC. 9\nD. 53\n答案："
    ]


def test_long_prompts_drop_examples_but_never_the_question(tokenizer_and_template):
    full = encoder_for(tokenizer_and_template)
    alone = len(full.encode(build_messages(TARGET, [], "Arithmetic", EN)))
    with_one = len(full.encode(build_messages(TARGET, [SUM], "Arithmetic", EN)))
    tight = encoder_for(tokenizer_and_template, cutoff_len=with_one)
    ids, kept = tight.encode_within_cutoff(TARGET, [SUM, PLANET], "Arithmetic")
    assert (kept, len(ids)) == (1, with_one)
    ids, kept = encoder_for(tokenizer_and_template, cutoff_len=alone - 1).encode_within_cutoff(
        TARGET, [SUM, PLANET], "Arithmetic")
    assert (kept, len(ids)) == (0, alone)  # too long even alone: the whole question is still evaluated


def test_examples_come_from_the_train_split_seeded_and_at_most_n_shot(tokenizer_and_template):
    tokenizer, _ = tokenizer_and_template
    subject = Subject("math", "Math", "STEM", [TARGET, TARGET], shots=[SUM, PLANET])
    prompts, shortened = encoder_for(tokenizer_and_template, n_shot=1).encode_subject(subject)
    assert shortened == 0
    texts = [tokenizer.decode(ids) for ids in prompts]
    assert all(text.count("Answer:") == 2 for text in texts)  # one example, then the question
    again, _ = encoder_for(tokenizer_and_template, n_shot=1).encode_subject(subject)
    assert again == prompts  # the seed fixes the draw
    prompts, _ = encoder_for(tokenizer_and_template, n_shot=5).encode_subject(subject)
    assert all(tokenizer.decode(ids).count("Answer:") == 3 for ids in prompts)  # only 2 exist


# ----- choosing the letter ---------------------------------------------------------------------------------


class LetterModel(torch.nn.Module):
    """Answers with the letter whose token id is the prompt's last token, and records its inputs."""

    def __init__(self, vocabulary: int, full_signature: bool):
        super().__init__()
        self.vocabulary = vocabulary
        self.calls: list[dict] = []
        if full_signature:
            self.forward = self.forward_with_options

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.answer(input_ids, attention_mask=attention_mask)

    def forward_with_options(self, input_ids, attention_mask=None, position_ids=None, use_cache=None,
                             logits_to_keep=0):
        return self.answer(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           logits_to_keep=logits_to_keep)

    def answer(self, input_ids, **inputs):
        self.calls.append({"input_ids": input_ids, **inputs})
        logits = torch.zeros(*input_ids.shape, self.vocabulary)
        logits.scatter_(2, input_ids.unsqueeze(-1), 5.0)
        if inputs.get("logits_to_keep"):
            logits = logits[:, -inputs["logits_to_keep"]:]
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("full_signature", [True, False], ids=["last-logits-only", "plain-forward"])
def test_the_letter_with_the_highest_logit_at_the_last_position_wins(tokenizer_and_template, full_signature):
    tokenizer, _ = tokenizer_and_template
    letters = choice_token_ids(tokenizer)
    model = LetterModel(len(tokenizer), full_signature)
    scorer = ChoiceScorer(model, tokenizer)
    prompts = [[7, 8, 9, letters[3]], [letters[0], letters[1]], [5, letters[2]]]
    assert scorer.predict(prompts) == ["D", "B", "C"]
    call = model.calls[-1]
    pad = tokenizer.pad_token_id
    assert call["input_ids"][1].tolist() == [pad, pad, letters[0], letters[1]]  # left padded
    assert call["attention_mask"][1].tolist() == [0, 0, 1, 1]
    if full_signature:
        assert call["position_ids"][1].tolist() == [0, 0, 0, 1]  # positions start at the first real token
        assert call["logits_to_keep"] == 1


def test_choice_tokens_are_the_single_letters(tokenizer_and_template):
    tokenizer, _ = tokenizer_and_template
    assert tokenizer.convert_ids_to_tokens(choice_token_ids(tokenizer)) == ["A", "B", "C", "D"]


def test_padded_batches_score_like_single_prompts(tiny_model, tokenizer_and_template):
    from tunery.model.load import load_model

    tokenizer, _ = tokenizer_and_template
    config = load_config(None, [f"model_name_or_path={tiny_model}", "template=chatml"])
    scorer = ChoiceScorer(load_model(config, tokenizer, for_training=False), tokenizer)
    prompts = [tokenizer.encode(text) for text in ("short", "a somewhat longer prompt", "mid length")]
    batched = scorer.choice_logits(prompts)
    alone = torch.cat([scorer.choice_logits([ids]) for ids in prompts])
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_predictions_come_back_in_question_order_whatever_the_batching(tokenizer_and_template):
    tokenizer, _ = tokenizer_and_template
    letters = choice_token_ids(tokenizer)
    scorer = ChoiceScorer(LetterModel(len(tokenizer), True), tokenizer)
    prompts = [[1] * length + [letters[i % 4]] for i, length in enumerate([3, 9, 1, 5, 7])]
    progress = SimpleNamespace(count=0, update=lambda n: setattr(progress, "count", progress.count + n))
    assert predict_subject(prompts, scorer, batch_size=2, progress=progress) == list("ABCDA")
    assert progress.count == 5


# ----- results ---------------------------------------------------------------------------------------------


def test_categories_and_average_are_over_questions():
    subjects = {
        "math": {"name": "Math", "category": "STEM", "correct": 3, "total": 4},
        "poetry": {"name": "Poetry", "category": "Humanities", "correct": 0, "total": 2},
        "physics": {"name": "Physics", "category": "STEM", "correct": 1, "total": 4},
    }
    scores = category_scores(subjects)
    assert list(scores) == ["STEM", "Humanities", "Average"]
    assert scores["STEM"] == {"correct": 4, "total": 8, "accuracy": 0.5}
    assert scores["Humanities"]["accuracy"] == 0.0
    assert scores["Average"] == {"correct": 4, "total": 10, "accuracy": 0.4}


def test_table_columns_line_up_with_chinese_subject_names():
    subjects = {"law": {"name": "法学", "category": "Humanities", "correct": 1, "total": 2, "accuracy": 0.5},
                "math": {"name": "Math", "category": "STEM", "correct": 2, "total": 2, "accuracy": 1.0}}
    results = {"task": "quiz", "split": "test", "n_shot": 0, "subjects": subjects,
               "categories": category_scores(subjects)}
    lines = format_results(results).splitlines()
    assert lines[2].startswith("法学     Humanities")  # CJK characters take two columns: padded to "subject"
    assert lines[3].startswith("Math     STEM      ")
    assert {display_width(line) for line in lines[1:4]} == {display_width(lines[1])}
    assert lines[-1] == "Average           3      4     75.00"


def test_eval_command_writes_results_json_and_prints_the_table(tiny_model, tmp_path, capsys):
    write_task(tmp_path / "tasks")
    save_dir = tmp_path / "results"
    code = main(["eval", f"model_name_or_path={tiny_model}", "template=chatml",
                 f"task_dir={tmp_path / 'tasks'}", "task=quiz_test", "n_shot=2",
                 "per_device_eval_batch_size=2", f"save_dir={save_dir}"])
    assert code == 0
    results = json.loads((save_dir / "results.json").read_text())
    assert (results["task"], results["split"], results["n_shot"]) == ("quiz", "test", 2)
    assert list(results["subjects"]) == ["math", "physics", "poetry"]
    assert list(results["categories"]) == ["STEM", "Humanities", "Average"]
    assert [s["total"] for s in results["subjects"].values()] == [3, 3, 3]
    assert results["categories"]["STEM"]["total"] == 6
    assert results["categories"]["Average"]["total"] == 9
    assert all(len(s["predictions"]) == 3 and set(s["predictions"]) <= set("ABCD")
               for s in results["subjects"].values())
    correct = sum(s["correct"] for s in results["subjects"].values())
    assert results["accuracy"] == results["categories"]["Average"]["accuracy"] == correct / 9
    out = capsys.readouterr().out
    assert "Physics" in out and "Humanities" in out and "Average" in out
    assert f"Results are in {save_dir / 'results.json'}" in out
    assert format_results(results) in out


def test_results_go_next_to_the_run_by_default(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["eval", f"model_name_or_path={tiny_model}", "template=chatml", "task=sample_test",
                 "n_shot=0", "output_dir=run", "cutoff_len=256"])
    assert code == 0
    results = json.loads((tmp_path / "run" / "eval_sample_test" / "results.json").read_text())
    assert results["categories"]["Average"]["total"] == 40


# ----- the task folder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["sample", "sample_zh"])
def test_builtin_sample_tasks_are_complete(task):
    loaded = load_task(f"{task}_test", "builtin", n_shot=5)
    assert len(loaded.subjects) >= 3
    assert len({subject.category for subject in loaded.subjects}) >= 2
    answers = Counter(q.answer for subject in loaded.subjects for q in subject.questions)
    assert set(answers) == set("ABCD") and max(answers.values()) <= loaded.question_count // 3
    assert all(len(subject.shots) == 5 and len(subject.questions) >= 8 for subject in loaded.subjects)


def test_a_bare_task_name_means_its_test_split_and_jsonl_rows_work(tmp_path):
    folder = write_task(tmp_path, subjects={"math": ("Math", "STEM")})
    (folder / "test" / "math.csv").unlink()
    (folder / "test" / "math.jsonl").write_text(
        '{"question": "1 + 1?", "A": 2, "B": 3, "C": 4, "D": 5, "answer": "a"}\n\n'
    )
    task = load_task("quiz", str(tmp_path), n_shot=1)
    assert task.split == "test"
    assert task.subjects[0].questions == [Question("1 + 1?", ("2", "3", "4", "5"), "A")]


def test_cmmlu_style_files_are_read_as_they_are(tmp_path):
    folder = write_task(tmp_path, subjects={"agronomy": ("农学", "Other")})
    write_rows(folder / "test" / "agronomy.csv", [["0", "问题？", "甲", "乙", "丙", "丁", "C"]],
               header=("", "Question", "A", "B", "C", "D", "Answer"))
    assert load_task("quiz_test", str(tmp_path), 0).subjects[0].questions[0].answer == "C"


def test_unknown_task_suggests_the_closest_and_lists_the_available(tmp_path):
    write_task(tmp_path)
    with pytest.raises(DataError, match=r"Unknown benchmark task 'quix_test'.*Did you mean 'quiz'\?.*"
                                        r"Available tasks: quiz, sample, sample_zh"):
        load_task("quix_test", str(tmp_path), 5)


def test_missing_split_lists_the_splits(tmp_path):
    write_task(tmp_path)
    with pytest.raises(DataError, match=r"no split 'tset'.*Did you mean 'quiz_test'\?.*splits: test, train"):
        load_task("quiz_tset", str(tmp_path), 5)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["Q?", "a", "b", "c", "d", "E"], r"math\.csv row 2: the answer 'E' is not one of A, B, C, D"),
        (["Q?", "a", "b", "c", "d", " "], r"math\.csv row 2: the answer is empty"),
        (["Q?", "a", "b"], r"math\.csv row 2: 3 fields, the header has 6"),
        (["", "a", "b", "c", "d", "A"], r"math\.csv row 2: the question is empty"),
    ],
)
def test_malformed_rows_name_the_file_and_row(tmp_path, row, message):
    folder = write_task(tmp_path, subjects={"math": ("Math", "STEM")})
    write_rows(folder / "test" / "math.csv", [["Fine?", "a", "b", "c", "d", "B"], row])
    with pytest.raises(DataError, match=message):
        load_task("quiz_test", str(tmp_path), 0)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_mapping", r"has no mapping\.json"),
        ("bad_mapping", r"subject 'math' needs string fields \"name\" and \"category\""),
        ("no_train", r"no 'train' split to take 5 few-shot examples from.*n_shot=0"),
        ("no_subject_file", r"has no file for subject 'math' \(expected math\.csv or math\.jsonl\)"),
        ("headerless", r"lacks column\(s\) question, answer \(found: Q\?, a, b.*tunery\.evaluation\.convert"),
    ],
)
def test_broken_task_folders_say_what_to_fix(tmp_path, breakage, message):
    folder = write_task(tmp_path, subjects={"math": ("Math", "STEM")})
    if breakage == "no_mapping":
        (folder / "mapping.json").unlink()
    elif breakage == "bad_mapping":
        (folder / "mapping.json").write_text('{"math": {"name": "Math"}}')
    elif breakage == "no_train":
        for path in (folder / "train").iterdir():
            path.unlink()
        (folder / "train").rmdir()
    elif breakage == "no_subject_file":
        (folder / "test" / "math.csv").unlink()
    else:
        (folder / "test" / "math.csv").write_text("Q?,a,b,c,d,A\n")
    with pytest.raises(DataError, match=message):
        load_task("quiz_test", str(tmp_path), 5)


def test_bad_task_is_one_line_on_the_command_line(tiny_model, capsys):
    assert main(["eval", f"model_name_or_path={tiny_model}", "task=sampel_test"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'sample'?" in err and "Traceback" not in err
    assert main(["eval", f"model_name_or_path={tiny_model}"]) == 2
    assert "`tunery eval` needs a benchmark: set `task`" in capsys.readouterr().err


# ----- converting the published benchmarks ----------------------------------------------------------------


def test_mmlu_as_llamafactory_ships_it_converts_to_a_task(tmp_path):
    source = tmp_path / "lf" / "mmlu"
    source.mkdir(parents=True)
    (source / "mapping.json").write_text('{"anatomy": {"name": "Anatomy", "category": "STEM"}}')
    with zipfile.ZipFile(source / "mmlu.zip", "w") as archive:  # MMLU's CSV files have no header row
        archive.writestr("data/dev/anatomy_dev.csv", 'Bones?,"a, b",c,d,e,B\n')
        archive.writestr("data/test/anatomy_test.csv", "Skull?,a,b,c,d,C\nSpine?,a,b,c,d,D\n")
        archive.writestr("data/test/virology_test.csv", "Not in the mapping?,a,b,c,d,A\n")
    counts = convert(source, tmp_path / "tasks" / "mmlu")
    assert counts == {"train": {"anatomy": [1, 0]}, "test": {"anatomy": [2, 0]}}
    task = load_task("mmlu_test", str(tmp_path / "tasks"), n_shot=5)
    assert [q.answer for q in task.subjects[0].questions] == ["C", "D"]
    assert task.subjects[0].shots == [Question("Bones?", ("a, b", "c", "d", "e"), "B")]


def test_ceval_style_folder_keeps_its_unanswered_test_split_out_of_scoring(tmp_path):
    source = tmp_path / "ceval"
    (source / "val").mkdir(parents=True)
    (source / "test").mkdir()
    (source / "mapping.json").write_text('{"law": {"name": "法学", "category": "Humanities"}}')
    row = "0,问题,甲,乙,丙,丁"
    (source / "val" / "law_val.csv").write_text(f"id,question,A,B,C,D,answer,explanation\n{row},B,\n")
    (source / "test" / "law_test.csv").write_text(f"id,question,A,B,C,D\n{row}\n")  # no answers, as C-Eval
    counts = convert(source, tmp_path / "tasks" / "ceval")
    assert counts == {"validation": {"law": [1, 0]}, "test": {"law": [1, 1]}}
    assert load_task("ceval_validation", str(tmp_path / "tasks"), 0).subjects[0].questions[0].answer == "B"
    with pytest.raises(DataError, match=r"law\.csv row 1: the answer is empty"):
        load_task("ceval_test", str(tmp_path / "tasks"), 0)
