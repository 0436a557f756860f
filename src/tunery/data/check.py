"""The report behind ``tunery data check``: is the data what you think it is?

``check_data`` prepares the data exactly as training would (through the same
cache) and adds the first few examples rendered as segments of text that are
learned or not, so a wrong mask is visible at a glance. ``format_report`` turns
it into terminal text (ANSI colour only when asked); ``iter_json_lines`` yields
every encoded example as one JSON line for ``--json``.
"""

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from datasets import Dataset

from tunery.config.schema import RunConfig
from tunery.data.encode import IGNORE_INDEX
from tunery.data.packing import unpack_row
from tunery.data.pipeline import DataReport, PreparedData, prepare_data

LEARNED_OPEN, LEARNED_CLOSE = "[[", "]]"  # marks learned text when there is no colour
GREEN, DIM, BOLD, RED, RESET = "\033[32m", "\033[2m", "\033[1m", "\033[31m", "\033[0m"


@dataclass
class RenderedExample:
    """One example as ``(text, learned)`` segments, in order."""

    num_tokens: int
    num_learned: int
    segments: list[tuple[str, bool]] = field(default_factory=list)
    reference: str | None = None  # ppo/grpo prompts: the answer reward functions compare with


@dataclass
class CheckReport:
    data: DataReport
    examples: list[RenderedExample] = field(default_factory=list)
    nothing_learned: int = 0  # examples whose every label is masked: they teach nothing

    def to_dict(self) -> dict:
        return {"data": self.data.to_dict(), "examples": [asdict(e) for e in self.examples],
                "nothing_learned": self.nothing_learned}


def check_data(config: RunConfig, tokenizer, template, num_examples: int = 3) -> CheckReport:
    """Prepare the data as training would and render its first ``num_examples`` examples."""
    prepared = prepare_data(config, tokenizer, template)
    if is_prompt_rows(prepared.train):  # ppo/grpo: prompts to roll out, nothing is learned from labels
        prompts = render_prompts(prepared.train, tokenizer, num_examples)
        return CheckReport(data=prepared.report, examples=prompts)
    examples = render_examples(prepared.train, tokenizer, num_examples)
    nothing_learned = sum(
        all(label == IGNORE_INDEX for label in labels) for _, labels in iter_examples(prepared.train)
    )
    return CheckReport(data=prepared.report, examples=examples, nothing_learned=nothing_learned)


def is_prompt_rows(dataset: Dataset | None) -> bool:
    """Rows of the RL stages: prompt ids and a reference answer, no labels."""
    return dataset is not None and "reference" in dataset.column_names


def render_prompts(dataset: Dataset, tokenizer, limit: int) -> list[RenderedExample]:
    """The first prompts as they are rolled out (all prompt, nothing learned), with their reference."""
    rendered = []
    for row in dataset.select(range(min(limit, len(dataset)))):
        text = tokenizer.decode(row["input_ids"], skip_special_tokens=False)
        rendered.append(RenderedExample(num_tokens=len(row["input_ids"]), num_learned=0,
                                        segments=[(text, False)], reference=row["reference"]))
    return rendered


def iter_examples(dataset: Dataset | None) -> Iterator[tuple[list[int], list[int]]]:
    """Every example's (input_ids, labels), packed rows split back into their examples."""
    if dataset is None:
        return
    for row in dataset:
        yield from unpack_row(row)


def render_examples(dataset: Dataset | None, tokenizer, limit: int) -> list[RenderedExample]:
    rendered = []
    for input_ids, labels in iter_examples(dataset):
        if len(rendered) >= limit:
            break
        rendered.append(render_example(input_ids, labels, tokenizer))
    return rendered


def render_example(input_ids: list[int], labels: list[int], tokenizer) -> RenderedExample:
    """Group consecutive tokens by whether they are learned, and decode each group."""
    segments: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(input_ids) + 1):
        learned = labels[start] != IGNORE_INDEX
        if end == len(input_ids) or (labels[end] != IGNORE_INDEX) != learned:
            text = tokenizer.decode(input_ids[start:end], skip_special_tokens=False)
            segments.append((text, learned))
            start = end
    num_learned = sum(1 for label in labels if label != IGNORE_INDEX)
    return RenderedExample(num_tokens=len(input_ids), num_learned=num_learned, segments=segments)


def iter_json_lines(prepared: PreparedData, split: str = "train") -> Iterator[str]:
    """One JSON object ``{"input_ids", "labels"}`` per encoded example (for ``--json``)."""
    dataset = prepared.train if split == "train" else prepared.eval
    if is_prompt_rows(dataset):
        for row in dataset:
            line = {"input_ids": row["input_ids"], "reference": row["reference"]}
            yield json.dumps(line, ensure_ascii=False)
        return
    for input_ids, labels in iter_examples(dataset):
        yield json.dumps({"input_ids": input_ids, "labels": labels})


def run_check(config: RunConfig, tokenizer, template, as_json: bool = False, show: int = 2,
              color: bool = False, write=print) -> None:
    """``tunery data check``: print the report, or every encoded example as JSON lines."""
    if as_json:
        for line in iter_json_lines(prepare_data(config, tokenizer, template)):
            write(line)
        return
    write(format_report(check_data(config, tokenizer, template, num_examples=show), color=color))


SOURCES = {
    "built": "tokenized now, cached for the next run",
    "cache": "tokenized data reused from the cache",
    "tokenized_path": "tokenized data loaded from tokenized_path",
}


def format_report(report: CheckReport, color: bool = False) -> str:
    """The report as terminal text; learned text is green (color) or wrapped in [[ ]]."""
    paint = (lambda code, text: f"{code}{text}{RESET}") if color else (lambda code, text: text)
    data = report.data
    lines = [paint(BOLD, f"Stage {data.stage}, cutoff_len {data.cutoff_len}"
                         f"{', packed' if data.packed else ''} ({SOURCES.get(data.source, data.source)})")]
    groups = (("Training datasets", data.datasets), ("Evaluation datasets", data.eval_datasets))
    for title, datasets in groups:
        if datasets:
            lines.append(paint(BOLD, f"{title}:"))
        for item in datasets:
            status = f"{item.valid} valid, {item.skipped} skipped of {item.rows} rows"
            lines.append(f"  {item.name} ({item.path}): {paint(RED, status) if item.skipped else status}")
            lines += [f"    skipped: {reason}" for reason in item.reasons]
    lines.append(f"Examples: {data.num_examples} train -> {data.num_rows} rows; "
                 f"{data.num_eval_examples} eval -> {data.num_eval_rows} rows")
    if data.lengths:
        stats = ", ".join(f"{key} {value}" for key, value in data.lengths.items())
        lines.append(f"Tokens per example (before truncation): {stats}")
        verb = "split across rows" if data.stage == "pt" and data.packed else "truncated to fit"
        if data.stage not in ("ppo", "grpo"):  # longer prompts are skipped, and listed as skipped rows
            lines.append(f"Longer than cutoff_len ({data.cutoff_len}): {data.truncated} examples ({verb})")
    if report.nothing_learned:
        lines.append(paint(RED, f"{report.nothing_learned} examples have no learned tokens and teach nothing "
                                "(the response was cut off: raise cutoff_len, or check the template)"))
    for number, example in enumerate(report.examples, start=1):
        counts = f"{example.num_tokens} tokens, {example.num_learned} learned"
        if example.reference is not None:
            counts = f"{example.num_tokens} prompt tokens"
        lines.append(paint(BOLD, f"Example {number}: {counts}"))
        lines.append(render_segments(example.segments, color))
        if example.reference is not None:
            lines.append(paint(BOLD, "Reference answer: ") + (example.reference or "(none)"))
    if not color and any(example.reference is None for example in report.examples):
        lines.append(f"(learned text is shown between {LEARNED_OPEN} and {LEARNED_CLOSE})")
    return "\n".join(lines)


def render_segments(segments: list[tuple[str, bool]], color: bool) -> str:
    parts = []
    for text, learned in segments:
        if color:
            parts.append(f"{GREEN if learned else DIM}{text}{RESET}")
        else:
            parts.append(f"{LEARNED_OPEN}{text}{LEARNED_CLOSE}" if learned else text)
    return "".join(parts)
