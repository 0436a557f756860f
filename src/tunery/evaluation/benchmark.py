"""``tunery eval``: multiple-choice benchmark accuracy (MMLU / C-Eval / CMMLU style).

Follows LLaMA-Factory 0.9's evaluator, so scores are comparable:

- each question is a user turn "question\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:" and its
  answer letter the assistant turn; ``n_shot`` solved questions from the subject's
  ``train`` split (drawn at random per question, seeded by ``seed``) come first;
- the task description ("The following are multiple choice questions (with answers)
  about {subject}.") starts the first user turn, as in LLaMA-Factory, and the chat
  system prompt stays the template's default (or ``default_system``);
- the conversation is rendered with the run's chat template, exactly as training and
  chat render it, and the prediction is the letter among A, B, C, D whose token has the
  highest logit at the last prompt position.

Unlike LLaMA-Factory, a prompt longer than ``cutoff_len`` drops few-shot examples
(never the question), and results.json holds the scores as well as the predictions.
Accuracy per category and the Average are over questions (micro averages).
"""

import inspect
import json
import logging
import random
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tunery.config import RunConfig
from tunery.data.conversation import Conversation, Message, Role
from tunery.errors import ConfigError, ModelError
from tunery.evaluation.taskdata import CHOICES, BenchmarkTask, Question, Subject, load_task
from tunery.fileio import write_text_atomic

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
AVERAGE = "Average"


@dataclass(frozen=True)
class PromptStyle:
    """The wording around a question (LLaMA-Factory's eval templates ``en`` and ``zh``)."""

    system: str
    choice: str
    answer: str


PROMPT_STYLES = {
    "en": PromptStyle(
        system="The following are multiple choice questions (with answers) about {subject}.\n\n",
        choice="\n{choice}. {content}",
        answer="\nAnswer:",
    ),
    "zh": PromptStyle(
        system="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
        choice="\n{choice}. {content}",
        answer="\n答案：",
    ),
}


# ----- prompts -------------------------------------------------------------------------------------------


def render_question(question: Question, style: PromptStyle) -> str:
    choices = "".join(style.choice.format(choice=letter, content=text)
                      for letter, text in zip(CHOICES, question.choices, strict=True))
    return question.question + choices + style.answer


def build_messages(
    question: Question, shots: list[Question], subject_name: str, style: PromptStyle
) -> list[Message]:
    """Solved examples as user/assistant turns, then the question; the task description opens turn one."""
    messages = []
    for shot in shots:
        messages += [Message(Role.USER, render_question(shot, style)), Message(Role.ASSISTANT, shot.answer)]
    messages.append(Message(Role.USER, render_question(question, style)))
    first = messages[0]
    messages[0] = Message(first.role, style.system.format(subject=subject_name) + first.content)
    return messages


@dataclass
class PromptEncoder:
    """Few-shot prompts as token ids, through the run's chat template, within ``cutoff_len``."""

    tokenizer: Any
    template: Any
    style: PromptStyle
    cutoff_len: int
    n_shot: int
    seed: int

    def encode(self, messages: list[Message]) -> list[int]:
        return self.template.encode_prompt(self.tokenizer, Conversation(messages=messages))

    def encode_subject(self, subject: Subject) -> tuple[list[list[int]], int]:
        """One prompt per question of ``subject``, and how many prompts had to drop examples."""
        # seeded by subject, so a subject's prompts do not depend on which subjects ran before it
        rng = random.Random(f"{self.seed}:{subject.key}")
        prompts, shortened = [], 0
        for question in subject.questions:
            shots = rng.sample(subject.shots, min(self.n_shot, len(subject.shots)))
            ids, kept = self.encode_within_cutoff(question, shots, subject.name)
            prompts.append(ids)
            shortened += kept < len(shots)
        return prompts, shortened

    def encode_within_cutoff(
        self, question: Question, shots: list[Question], subject_name: str
    ) -> tuple[list[int], int]:
        """Drop examples from the end until the prompt fits; the question itself is never cut."""
        for count in range(len(shots), -1, -1):
            ids = self.encode(build_messages(question, shots[:count], subject_name, self.style))
            if len(ids) <= self.cutoff_len:
                return ids, count
        return ids, 0  # longer than cutoff_len even alone: evaluated whole rather than cut


# ----- scoring -------------------------------------------------------------------------------------------


def choice_token_ids(tokenizer) -> list[int]:
    """The token of each answer letter as the model writes it right after the assistant prefix."""
    ids = [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in CHOICES]
    if len(set(ids)) != len(ids):
        raise ModelError(f"The tokenizer maps the answer letters {', '.join(CHOICES)} to the same tokens "
                         f"({ids}); it cannot be evaluated on multiple-choice benchmarks.")
    return ids


class ChoiceScorer:
    """Picks A/B/C/D for a batch of prompts from the logits at their last position."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.choice_ids = choice_token_ids(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        accepted = inspect.signature(model.forward).parameters
        # logits for the last position only: a full (batch, length, vocabulary) tensor is gigabytes
        self.last_logits_only = "logits_to_keep" in accepted
        self.pass_positions = "position_ids" in accepted

    def predict(self, prompts: list[list[int]]) -> list[str]:
        chosen = self.choice_logits(prompts).argmax(dim=-1)
        return [CHOICES[index] for index in chosen.tolist()]

    @torch.inference_mode()
    def choice_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        """(prompts, 4) logits of A, B, C, D after each prompt, in float32.

        Left padded, so every row's last prompt token sits in the final column.
        """
        width = max(len(ids) for ids in prompts)
        device = self.model.device
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
        if self.pass_positions:  # each row counts positions from its first real token, as unpadded
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.last_logits_only:
            kwargs["logits_to_keep"] = 1
        logits = self.model(**kwargs).logits[:, -1, :]
        return logits[:, self.choice_ids].float().cpu()


def predict_subject(
    prompts: list[list[int]], scorer: ChoiceScorer, batch_size: int, progress: tqdm
) -> list[str]:
    """Predictions in question order; batches hold prompts of similar length to waste little on padding."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: any OOM comes early
    predictions: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for index, letter in zip(batch, scorer.predict([prompts[i] for i in batch]), strict=True):
            predictions[index] = letter
        progress.update(len(batch))
    return predictions


# ----- results -------------------------------------------------------------------------------------------


def score(correct: int, total: int) -> dict[str, Any]:
    return {"correct": correct, "total": total, "accuracy": correct / total if total else 0.0}


def subject_result(subject: Subject, predictions: list[str]) -> dict[str, Any]:
    correct = sum(p == q.answer for p, q in zip(predictions, subject.questions, strict=True))
    return {"name": subject.name, "category": subject.category, **score(correct, len(predictions)),
            "predictions": predictions}


def category_scores(subjects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy over the questions of each category (in order of appearance), then the Average."""
    totals: dict[str, list[int]] = {}
    for result in subjects.values():
        for name in (result["category"], AVERAGE):
            counts = totals.setdefault(name, [0, 0])
            counts[0] += result["correct"]
            counts[1] += result["total"]
    average = totals.pop(AVERAGE)
    return {**{name: score(*counts) for name, counts in totals.items()}, AVERAGE: score(*average)}


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: CJK characters (C-Eval subject names) take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def format_results(results: dict[str, Any]) -> str:
    """The terminal report: one line per subject, then per category, accuracies in percent."""
    subjects, categories = results["subjects"], results["categories"]
    width = max(display_width(text) for text in ["subject", *(s["name"] for s in subjects.values())])
    cat_width = max(display_width(text) for text in ["category", *categories])

    def counts(entry: dict[str, Any]) -> str:
        return f"{entry['correct']:>7}  {entry['total']:>5}  {100 * entry['accuracy']:>8.2f}"

    heading = f"{'correct':>7}  {'total':>5}  {'accuracy':>8}"
    lines = [f"{results['task']} ({results['split']} split, {results['n_shot']}-shot)",
             f"{pad('subject', width)}  {pad('category', cat_width)}  {heading}"]
    lines += [f"{pad(s['name'], width)}  {pad(s['category'], cat_width)}  {counts(s)}"
              for s in subjects.values()]
    lines += ["", f"{pad('category', cat_width)}  {heading}"]
    lines += [f"{pad(name, cat_width)}  {counts(entry)}" for name, entry in categories.items()]
    return "\n".join(lines)


def results_dir(config: RunConfig) -> Path:
    """``save_dir``, else ``<output_dir>/eval_<task>`` (next to the run that is evaluated)."""
    evaluation = config.evaluation
    return Path(evaluation.save_dir or Path(config.training.output_dir) / f"eval_{evaluation.task}")


def save_results(results: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULTS_FILE
    write_text_atomic(path, json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    return path


# ----- the run -------------------------------------------------------------------------------------------


def evaluate_task(
    task: BenchmarkTask, encoder: PromptEncoder, scorer: ChoiceScorer, batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per-subject results, with one progress bar over every question of the task."""
    subjects, shortened = {}, 0
    with tqdm(total=task.question_count, desc=f"Evaluating {task.name}", unit="question") as progress:
        for subject in task.subjects:
            progress.set_postfix_str(subject.name)
            prompts, dropped = encoder.encode_subject(subject)
            shortened += dropped
            predictions = predict_subject(prompts, scorer, batch_size, progress)
            subjects[subject.key] = subject_result(subject, predictions)
    if shortened:
        logger.warning("%d of %d prompts were longer than cutoff_len=%d with %d examples and were given "
                       "fewer (raise cutoff_len to keep them all).", shortened, task.question_count,
                       encoder.cutoff_len, encoder.n_shot)
    return subjects


def run_benchmark(config: RunConfig) -> tuple[dict[str, Any], Path]:
    """Evaluate the model (and adapters) on ``config.evaluation.task``; returns the results and their file."""
    from tunery.model.load import load_model
    from tunery.train.run import load_tokenizer_and_template

    evaluation = config.evaluation
    if not evaluation.task:
        raise ConfigError("`tunery eval` needs a benchmark: set `task` (e.g. task=sample_test, or mmlu_test "
                          "with task_dir pointing at your converted MMLU folder).")
    task = load_task(evaluation.task, evaluation.task_dir, evaluation.n_shot)  # bad data fails before loading
    tokenizer, template = load_tokenizer_and_template(config)
    encoder = PromptEncoder(tokenizer, template, PROMPT_STYLES[evaluation.lang], config.data.cutoff_len,
                            evaluation.n_shot, config.training.seed)
    model = load_model(config, tokenizer, for_training=False)
    started = time.perf_counter()
    batch_size = config.training.per_device_eval_batch_size
    subjects = evaluate_task(task, encoder, ChoiceScorer(model, tokenizer), batch_size)
    categories = category_scores(subjects)
    results = {
        "task": task.name, "split": task.split, "task_dir": str(task.folder.parent),
        "n_shot": evaluation.n_shot, "lang": evaluation.lang, "model": config.model.model_name_or_path,
        "adapters": config.model.adapter_name_or_path or [], "template": template.name,
        "accuracy": categories[AVERAGE]["accuracy"], "categories": categories, "subjects": subjects,
        "runtime_seconds": round(time.perf_counter() - started, 2),
    }
    return results, save_results(results, results_dir(config))
