"""`tunery score`: rewards from a model trained with stage rm, for texts or chat answers."""

import argparse
import json
from pathlib import Path

from tunery.cli.common import add_command, config_from_args
from tunery.errors import DataError, TuneryError

PREVIEW_CHARS = 60


def add_score(commands) -> None:
    parser = add_command(
        commands, "score", help="score answers or texts with a trained reward model (stage rm)",
        description="Prints one reward per input, in order: each --text (raw text, no chat template), "
        "then each line of --file: {\"messages\": [{\"role\", \"content\"}, ...]} (OpenAI style, an "
        "optional system message first, the assistant answer to score last; rendered with the chat "
        "template as in training, truncated to cutoff_len) or {\"text\": \"...\"}. The adapter (or the "
        "full model folder) must hold value_head.safetensors. "
        "Example: tunery score examples/score.yaml --text 'Hello!' --file answers.jsonl",
        sections=["model"], handler=run_score, optional_config=True,
        config_help="YAML config naming the model, the reward model adapter and the template",
    )
    parser.add_argument("--text", action="append", default=[], help="a raw text to score (repeatable)")
    parser.add_argument("--file", type=Path, help="JSON lines: {\"messages\": [...]} or {\"text\": ...}")
    parser.add_argument("--json", action="store_true", help="print {\"scores\": [...]} as JSON")


def run_score(args: argparse.Namespace) -> None:
    inputs = [{"text": text} for text in args.text]
    if args.file is not None:
        inputs += read_inputs(args.file)
    if not inputs:
        raise TuneryError("Nothing to score: give --text TEXT (repeatable) or --file FILE.jsonl.")
    config = config_from_args(args, "do_train=false")
    from tunery.infer.reward import RewardScorer

    with RewardScorer(config) as scorer:
        scores = score_inputs(scorer, inputs)
    if args.json:
        print(json.dumps({"scores": scores}))
        return
    for item, score in zip(inputs, scores, strict=True):
        print(f"{score:+.4f}\t{preview(item)}")


def read_inputs(path: Path) -> list[dict]:
    """Each non-blank line of ``path``: ``{"text": str}``, or ``{"conversation": Conversation}``."""
    from tunery.data.converters import RowError
    from tunery.infer.reward import conversation_from_openai

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"Cannot read {path}: {err.strerror or err}.") from None
    inputs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where} is not valid JSON ({err.msg}).") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            if not row["text"]:
                raise DataError(f"{where} has an empty text; there is nothing to score.")
            inputs.append({"text": row["text"]})
        elif isinstance(row, dict) and "messages" in row:
            try:
                inputs.append({"conversation": conversation_from_openai(row)})
            except RowError as err:
                raise DataError(f"{where}: {err}.") from None
        else:
            raise DataError(f'{where} must be {{"messages": [{{"role", "content"}}, ...]}} '
                            'or {"text": "..."}.')
    return inputs


def score_inputs(scorer, inputs: list[dict]) -> list[float]:
    """Texts and conversations scored in two batches, the scores put back in input order."""
    texts = [i for i, item in enumerate(inputs) if "text" in item]
    chats = [i for i, item in enumerate(inputs) if "conversation" in item]
    scores = [0.0] * len(inputs)
    text_scores = scorer.score_texts([inputs[i]["text"] for i in texts]) if texts else []
    chat_scores = scorer.score_conversations([inputs[i]["conversation"] for i in chats]) if chats else []
    for index, score in [*zip(texts, text_scores, strict=True), *zip(chats, chat_scores, strict=True)]:
        scores[index] = score
    return scores


def preview(item: dict) -> str:
    """A one-line reminder of what was scored: the text, or the answer of a conversation."""
    text = item["text"] if "text" in item else item["conversation"].messages[-1].content
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"
