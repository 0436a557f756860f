"""Batch prediction: generate for every evaluation example and score it against its answer.

``tunery predict CONFIG`` (or ``tunery train`` with ``do_predict: true``, as in
LLaMA-Factory) reads ``eval_dataset`` (falling back to ``dataset``), renders each
row's prompt with the chat template exactly as training did, generates in
batches of ``per_device_eval_batch_size`` prompts of similar length (little
padding), and writes to ``output_dir``:

- ``generated_predictions.jsonl``: one ``{"prompt", "predict", "label"}`` per row;
- ``predict_results.json``: ROUGE-1/2/L and BLEU-4 (see ``similarity``),
  runtime, samples/s and generated tokens/s, under LLaMA-Factory's key names.

A prompt longer than ``cutoff_len`` keeps its last ``cutoff_len`` tokens, so the
question and the assistant header the model answers after survive.
"""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tunery.config import RunConfig
from tunery.data.conversation import Conversation, Role
from tunery.data.converters import RowError, to_conversation
from tunery.data.loader import BadRow, read_rows
from tunery.data.pipeline import sample_rows
from tunery.data.registry import resolve_datasets
from tunery.errors import ConfigError, DataError
from tunery.fileio import write_text_atomic
from tunery.infer.engine import ChatEngine, Reply, create_engine
from tunery.infer.similarity import average_scores

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"
RESPONSE_ROLES = (Role.ASSISTANT, Role.FUNCTION_CALL)


@dataclass
class PredictionExample:
    prompt_ids: list[int]
    label: str
    question: str  # the last prompt-side turn, for reports


@dataclass
class PredictionRun:
    """What one prediction produced, for files, reports and comparisons."""

    prompts: list[str]
    questions: list[str]
    labels: list[str]
    predictions: list[str]
    metrics: dict[str, float]


def prediction_datasets(config: RunConfig) -> list[str]:
    names = config.data.eval_dataset or config.data.dataset
    if not names:
        raise ConfigError("Prediction needs examples: set `eval_dataset` (or `dataset`) in the config.")
    return names


def load_examples(config: RunConfig, tokenizer, template) -> list[PredictionExample]:
    """Every usable row of the prediction datasets as (prompt ids, reference answer)."""
    examples, skipped = [], []
    for spec in resolve_datasets(prediction_datasets(config), config.data.dataset_dir):
        for where, row in sample_rows(read_rows(spec.path, spec.split), spec, config):
            try:
                conversation = row_conversation(row, spec, config)
                examples.append(encode_example(conversation, tokenizer, template, config.data.cutoff_len))
            except (RowError, DataError) as err:
                skipped.append(f"{spec.name} {where}: {err}")
    if skipped:
        logger.warning("Skipped %d rows that cannot be prompted, e.g. %s", len(skipped), skipped[0])
    if not examples:
        reason = f" (e.g. {skipped[0]})" if skipped else ""
        raise DataError(f"No usable rows to predict in {', '.join(prediction_datasets(config))}{reason}.")
    return examples


def row_conversation(row, spec, config: RunConfig) -> Conversation:
    if isinstance(row, BadRow):
        raise RowError(row.reason)
    conversation = to_conversation(row, spec)
    if not conversation.system and config.data.default_system:
        conversation.system = config.data.default_system
    return conversation


def encode_example(conversation: Conversation, tokenizer, template, cutoff_len: int) -> PredictionExample:
    """The prompt is every turn but a final response; that response (if any) is the label."""
    messages, label = conversation.messages, ""
    if messages and messages[-1].role in RESPONSE_ROLES:
        messages, label = messages[:-1], messages[-1].content
    prompt = template.encode_prompt(
        tokenizer, Conversation(messages=messages, system=conversation.system, tools=conversation.tools)
    )
    question = messages[-1].content if messages else ""
    return PredictionExample(prompt_ids=prompt[-cutoff_len:], label=label, question=question)


def generate_all(
    engine: ChatEngine, prompts: list[list[int]], batch_size: int, overrides: dict
) -> list[Reply]:
    """Replies for every prompt, generated in batches of similar length, returned in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[Reply | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc="Predicting", unit="example") as progress:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            for index, reply in zip(batch, engine.generate_batch([prompts[i] for i in batch], **overrides),
                                    strict=True):
                replies[index] = reply
            progress.update(len(batch))
    return replies


def predict(config: RunConfig, engine: ChatEngine | None = None) -> PredictionRun:
    """Generate for every example and score; writes nothing (see ``run_prediction``)."""
    from transformers import set_seed

    engine = engine or create_engine(config)
    set_seed(config.training.seed)
    examples = load_examples(config, engine.tokenizer, engine.template)
    overrides = {"num_beams": config.evaluation.eval_num_beams}
    started = time.perf_counter()
    batch_size = config.training.per_device_eval_batch_size
    replies = generate_all(engine, [e.prompt_ids for e in examples], batch_size, overrides)
    runtime = time.perf_counter() - started
    predictions = [reply.text for reply in replies]
    labels = [example.label for example in examples]
    generated = sum(reply.completion_tokens for reply in replies)
    metrics = {f"predict_{name}": value for name, value in average_scores(predictions, labels).items()}
    metrics |= {
        "predict_runtime": round(runtime, 4),
        "predict_samples": len(examples),
        "predict_samples_per_second": round(len(examples) / runtime, 3),
        "predict_tokens_per_second": round(generated / runtime, 3),
    }
    prompts = [engine.tokenizer.decode(e.prompt_ids, skip_special_tokens=False) for e in examples]
    questions = [example.question for example in examples]
    return PredictionRun(prompts, questions, labels, predictions, metrics)


def save_prediction(run: PredictionRun, output_dir: str | Path) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"prompt": p, "predict": y, "label": t}, ensure_ascii=False)
        for p, y, t in zip(run.prompts, run.predictions, run.labels, strict=True)
    ]
    write_text_atomic(out / PREDICTIONS_FILE, "\n".join(lines) + "\n")
    write_text_atomic(out / RESULTS_FILE, json.dumps(run.metrics, indent=2) + "\n")


def run_prediction(config: RunConfig, engine: ChatEngine | None = None) -> dict[str, float]:
    """Predict, write both files to ``output_dir``, return the metrics."""
    run = predict(config, engine)
    save_prediction(run, config.training.output_dir)
    logger.info("Wrote %s and %s to %s", PREDICTIONS_FILE, RESULTS_FILE, config.training.output_dir)
    return run.metrics


def after_training(config: RunConfig) -> RunConfig:
    """The config that predicts with what training just saved in ``output_dir``.

    LoRA training continues the last configured adapter and saves it to
    ``output_dir``, so that one takes the last adapter's place.
    """
    output_dir = config.training.output_dir
    update: dict = {}
    if config.finetuning.finetuning_type == "lora":
        update["adapter_name_or_path"] = [*(config.model.adapter_name_or_path or [])[:-1], output_dir]
    else:
        update["model_name_or_path"] = output_dir
    model = config.model.model_copy(update=update)
    return config.model_copy(update={"model": model})
