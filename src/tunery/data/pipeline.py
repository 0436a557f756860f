"""``prepare_data``: config + tokenizer + template -> train/eval rows and a report.

Steps: resolve dataset names (``registry``), read rows (``loader``), sample
(``num_samples`` per dataset, then ``max_samples``), convert and encode in
parallel batches (``encode``, ``datasets.map`` with
``preprocessing_num_workers``), drop and count bad rows, split off ``val_size``,
then pack (``packing``) or chunk (pt). For ppo/grpo a row is a prompt (ids up to
the assistant header), its ``reference`` answer and its ``conversation``
(``encode.encode_prompt_batch``). The result is cached (``cache``) and
reused until a file, a relevant config field, the tokenizer or the template
changes. ``tokenized_path`` (LLaMA-Factory's key): when that folder exists it is
loaded and everything else is skipped; otherwise the prepared data is also saved
there (Tunery then carries on training, where LLaMA-Factory would exit).
"""

import json
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from datasets import Dataset

from tunery.config.schema import RunConfig
from tunery.data import cache
from tunery.data.encode import (
    EncodeOptions,
    chunk_texts,
    encode_feedback_batch,
    encode_pairwise_batch,
    encode_prompt_batch,
    encode_pt_batch,
    encode_sft_batch,
)
from tunery.data.loader import BadRow, data_files, read_rows
from tunery.data.packing import pack_examples
from tunery.data.registry import DatasetSpec, resolve_datasets
from tunery.errors import ConfigError, DataError

MAX_REASONS = 5  # skipped-row reasons kept per dataset
ENCODERS = {"rm": encode_pairwise_batch, "dpo": encode_pairwise_batch, "kto": encode_feedback_batch,
            "ppo": encode_prompt_batch, "grpo": encode_prompt_batch}


@dataclass
class DatasetReport:
    """Rows of one dataset: how many were read, used and skipped, and why (first few)."""

    name: str
    path: str
    rows: int = 0
    valid: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass
class DataReport:
    stage: str = "sft"
    cutoff_len: int = 0
    datasets: list[DatasetReport] = field(default_factory=list)
    eval_datasets: list[DatasetReport] = field(default_factory=list)
    num_examples: int = 0  # encoded training examples (before packing)
    num_eval_examples: int = 0
    num_rows: int = 0  # training rows handed to the loop (after packing/chunking)
    num_eval_rows: int = 0
    packed: bool = False
    lengths: dict[str, int] = field(default_factory=dict)  # p50/p90/p99/max tokens before truncation
    truncated: int = 0  # examples longer than cutoff_len (cut, or split across rows for packed pt)
    source: str = "built"  # built | cache | tokenized_path

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DataReport":
        data = dict(data)
        for key in ("datasets", "eval_datasets"):
            data[key] = [DatasetReport(**item) for item in data.get(key, [])]
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class PreparedData:
    train: Dataset | None
    eval: Dataset | None
    report: DataReport


def prepare_data(config: RunConfig, tokenizer, template) -> PreparedData:
    """Encoded (and packed, for packing runs) train/eval rows for ``config``'s stage."""
    check_options(config, template)
    data = config.data
    if data.tokenized_path and Path(data.tokenized_path).is_file():
        raise ConfigError(
            f"tokenized_path '{data.tokenized_path}' is a file; give a folder to save the tokenized data in."
        )
    if data.tokenized_path and cache.has_saved(Path(data.tokenized_path)):
        return load_saved(Path(data.tokenized_path), "tokenized_path")
    if not data.dataset and not data.eval_dataset:
        raise ConfigError("No dataset given; set `dataset` to a dataset name or a data file.")
    specs = resolve_datasets(data.dataset, data.dataset_dir)
    eval_specs = resolve_datasets(data.eval_dataset, data.dataset_dir)
    check_stage(config.finetuning.stage, specs + eval_specs)
    key = cache.cache_key(cache_parts(config, specs, eval_specs, tokenizer, template))
    cached = cache.dataset_cache_dir() / key
    if cache.has_saved(cached) and not data.overwrite_cache:
        prepared = load_saved(cached, "cache")
    else:
        prepared = build_prepared(config, specs, eval_specs, tokenizer, template, key)
        cache.save_prepared(cached, prepared.train, prepared.eval, prepared.report.to_dict())
    if data.tokenized_path:
        report = prepared.report.to_dict()
        cache.save_prepared(Path(data.tokenized_path), prepared.train, prepared.eval, report)
    return prepared


def check_options(config: RunConfig, template) -> None:
    data = config.data
    if data.train_on_prompt and getattr(template, "efficient_eos", False):
        raise ConfigError("train_on_prompt cannot be used with this template (it uses efficient_eos); "
                          "remove `train_on_prompt` or pick another template.")
    if data.val_size and data.eval_dataset:
        raise ConfigError("Both `val_size` and `eval_dataset` are set; use one of them.")


PAIRWISE_STAGES = ("rm", "dpo")
RL_STAGES = ("ppo", "grpo")  # rows are prompts (+ the reference answer), rolled out by the policy


def check_stage(stage: str, specs: list[DatasetSpec]) -> None:
    """A dataset must have the shape its stage learns from: ranking pairs for rm/dpo, tags for kto."""
    for spec in specs:
        if spec.ranking and stage in RL_STAGES:
            raise DataError(f"Dataset '{spec.name}' is a ranking dataset (chosen/rejected); stage '{stage}' "
                            "samples its own answers and needs prompts: use an sft-format dataset (alpaca "
                            "or sharegpt); its answer, if any, becomes the `reference` for reward functions.")
        if spec.ranking and stage not in PAIRWISE_STAGES:
            raise DataError(f"Dataset '{spec.name}' is a ranking dataset (chosen/rejected) for stages "
                            f"rm/dpo; stage '{stage}' needs a dataset without `ranking`.")
        if stage in PAIRWISE_STAGES and not spec.ranking:
            raise DataError(f"Stage '{stage}' learns from answer pairs, but dataset '{spec.name}' is not a "
                            'ranking dataset; give it "ranking": true and chosen/rejected columns in '
                            "dataset_info.json, or use stage sft.")
        if stage == "kto" and not spec.column("kto_tag"):
            raise DataError(f"Stage 'kto' needs each answer marked good or bad, but dataset '{spec.name}' "
                            'has no kto_tag column; add "kto_tag": "<column>" to its "columns" in '
                            "dataset_info.json.")


ROW_COLUMNS = ("input_ids", "labels", "seq_lens", "kto_tag", "reference", "conversation")


def load_saved(path: Path, source: str) -> PreparedData:
    train, eval_set, report = cache.load_prepared(path)
    # folders written by LLaMA-Factory also hold attention_mask, images, ...: keep what rows need
    train, eval_set = (keep_row_columns(d) for d in (train, eval_set))
    prepared = PreparedData(train, eval_set, DataReport.from_dict(report))
    prepared.report.source = source
    return prepared


def keep_row_columns(dataset: Dataset | None) -> Dataset | None:
    if dataset is None:
        return None
    return dataset.select_columns([c for c in ROW_COLUMNS if c in dataset.column_names])


def cache_parts(config: RunConfig, specs: list[DatasetSpec], eval_specs: list[DatasetSpec],
                tokenizer, template) -> dict:
    data = config.data
    fields = ("cutoff_len", "train_on_prompt", "mask_history", "default_system", "max_samples", "val_size")
    return {
        "stage": config.finetuning.stage,
        "packing": config.packing_enabled,
        "seed": config.training.seed,
        "data": {name: getattr(data, name) for name in fields},
        "datasets": [describe_spec(spec) for spec in specs],
        "eval_datasets": [describe_spec(spec) for spec in eval_specs],
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
        "template": cache.template_fingerprint(template),
    }


def describe_spec(spec: DatasetSpec) -> dict:
    return {**asdict(spec), "path": str(spec.path), "files": cache.files_fingerprint(data_files(spec.path))}


def build_prepared(config: RunConfig, specs, eval_specs, tokenizer, template, key: str) -> PreparedData:
    data, stage = config.data, config.finetuning.stage
    report = DataReport(stage=stage, cutoff_len=data.cutoff_len, packed=config.packing_enabled)
    train, report.datasets = encode_datasets(config, specs, tokenizer, template, f"{key}-train")
    eval_set, report.eval_datasets = encode_datasets(config, eval_specs, tokenizer, template, f"{key}-eval")
    if train is not None:
        record_lengths(report, train["full_len"], data.cutoff_len)
        if data.val_size:
            train, eval_set = split_validation(train, data.val_size, config.training.seed)
    report.num_examples = len(train) if train is not None else 0
    report.num_eval_examples = len(eval_set) if eval_set is not None else 0
    train = shape_rows(train, config)
    eval_set = shape_rows(eval_set, config)
    report.num_rows = len(train) if train is not None else 0
    report.num_eval_rows = len(eval_set) if eval_set is not None else 0
    return PreparedData(train, eval_set, report)


def encode_datasets(config: RunConfig, specs: list[DatasetSpec], tokenizer, template,
                    fingerprint: str) -> tuple[Dataset | None, list[DatasetReport]]:
    """Read, convert and encode every dataset of one list into one Dataset of examples."""
    if not specs:
        return None, []
    raw, reports = read_datasets(config, specs)
    data = config.data
    stage = config.finetuning.stage
    if stage == "pt":
        function = partial(encode_pt_batch, specs=specs, tokenizer=tokenizer, template=template)
    else:
        opts = EncodeOptions(data.cutoff_len, data.train_on_prompt, data.mask_history, data.default_system)
        encoder = ENCODERS.get(stage, encode_sft_batch)
        function = partial(encoder, specs=specs, tokenizer=tokenizer, template=template, opts=opts)
    workers = data.preprocessing_num_workers
    encoded = raw.map(function, batched=True, batch_size=data.preprocessing_batch_size,
                      num_proc=workers if workers and workers > 1 and len(raw) >= workers else None,
                      remove_columns=["raw"], new_fingerprint=fingerprint, desc="Tokenizing")
    count_errors(encoded["error"], encoded["dataset"], encoded["where"], reports)
    for report in reports:
        if report.valid == 0:
            raise DataError(describe_empty(report, config.finetuning.stage))
    good = [i for i, error in enumerate(encoded["error"]) if not error]
    with cache.quiet_progress():
        kept = encoded.select(good).remove_columns(["error", "where", "dataset"]).flatten_indices()
    return kept, reports


def read_datasets(config: RunConfig, specs: list[DatasetSpec]) -> tuple[Dataset, list[DatasetReport]]:
    """All rows of all datasets as JSON text, with where each came from (for skipped-row reasons)."""
    columns: dict[str, list] = {"raw": [], "where": [], "dataset": [], "error": []}
    reports = []
    for index, spec in enumerate(specs):
        rows = sample_rows(read_rows(spec.path, spec.split), spec, config)
        reports.append(DatasetReport(name=spec.name, path=str(spec.path), rows=len(rows)))
        for where, row in rows:
            bad = isinstance(row, BadRow)
            columns["raw"].append("" if bad else json.dumps(row, ensure_ascii=False, default=str))
            columns["where"].append(where)
            columns["dataset"].append(index)
            columns["error"].append(row.reason if bad else "")
    return Dataset.from_dict(columns), reports


def sample_rows(rows: list, spec: DatasetSpec, config: RunConfig) -> list:
    """``num_samples`` (seeded draw, with replacement past the end) then the first ``max_samples``."""
    if spec.num_samples is not None and rows:
        rng = np.random.default_rng(config.training.seed)
        picks = list(rng.permutation(len(rows))[: spec.num_samples])
        if spec.num_samples > len(rows):
            picks += list(rng.choice(len(rows), spec.num_samples - len(rows)))
        rows = [rows[i] for i in picks]
    if config.data.max_samples is not None:
        rows = rows[: config.data.max_samples]
    return rows


def count_errors(errors: list[str], datasets: list[int], wheres: list[str],
                 reports: list[DatasetReport]) -> None:
    for error, index, where in zip(errors, datasets, wheres, strict=True):
        report = reports[index]
        if not error:
            report.valid += 1
            continue
        report.skipped += 1
        if len(report.reasons) < MAX_REASONS:
            report.reasons.append(f"{where}: {error}")


def describe_empty(report: DatasetReport, stage: str) -> str:
    reasons = "; ".join(report.reasons[:3]) or "it has no rows"
    hint = ""
    if stage == "sft" and any("response" in reason for reason in report.reasons):
        hint = " If it is plain text for pre-training, use `stage: pt`."
    elif stage == "pt" and any("empty text" in r or "prompt column" in r for r in report.reasons):
        hint = ' For plain text, set "columns": {"prompt": "<column>"} in its dataset_info.json entry.'

    return f"Dataset '{report.name}' ({report.path}) has no usable rows: {reasons}.{hint}"


def record_lengths(report: DataReport, lengths: list[int], cutoff_len: int) -> None:
    ordered = sorted(lengths)
    if not ordered:
        return
    report.lengths = {f"p{p}": nearest_rank(ordered, p) for p in (50, 90, 99)} | {"max": ordered[-1]}
    report.truncated = sum(1 for length in ordered if length > cutoff_len)


def nearest_rank(ordered: list[int], percent: int) -> int:
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]


def split_validation(examples: Dataset, val_size: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out a fraction (< 1) or a count (>= 1) of examples, seeded."""
    test_size = val_size if val_size < 1 else int(val_size)
    try:
        parts = examples.train_test_split(test_size=test_size, seed=seed)
    except ValueError as err:
        raise ConfigError(f"val_size {val_size} does not fit {len(examples)} examples ({err}).") from None
    with cache.quiet_progress():
        return parts["train"].flatten_indices(), parts["test"].flatten_indices()


def shape_rows(examples: Dataset | None, config: RunConfig) -> Dataset | None:
    """Final rows: packed (sft) or chunked (pt) when packing, else one row per example."""
    if examples is None:
        return None
    cutoff = config.data.cutoff_len
    if config.finetuning.stage == "pt":
        if config.packing_enabled:
            return Dataset.from_list(chunk_texts(examples["input_ids"], cutoff))
        ids = [row[:cutoff] for row in examples["input_ids"]]
        return Dataset.from_dict({"input_ids": ids, "labels": ids})
    if config.packing_enabled:
        return Dataset.from_dict(pack_examples(examples["input_ids"], examples["labels"], cutoff))
    return examples.remove_columns(["full_len"])
