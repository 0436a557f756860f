"""Turn encoded rows into model inputs.

``collate_flat`` is the fast path: every example of the batch goes into ONE row
with no padding at all, ``position_ids`` restart at 0 for each example and
``cu_seq_lens_*`` mark where examples begin, so the attention registered in
``tunery.model.attention`` keeps them apart. ``collate_padded`` builds the
classic right-padded batch with an ``attention_mask`` for models or attention
kernels that cannot take a flat row, and for comparisons.

``split_flat`` cuts a flat batch at example boundaries into pieces of at most
``max_tokens`` tokens, so a large batch can run as several smaller forward
passes (activation memory grows with the tokens of one pass) with the very same
summed loss and gradients.

Rows are ``{"input_ids": [...], "labels": [...]}`` plus, for packed rows,
``"seq_lens": [...]`` (lengths of the examples concatenated in the row). Labels
are not shifted: the logit at position t predicts ``labels[t + 1]`` and the loss
does the shift, as in Hugging Face models.
"""

import itertools
from collections.abc import Mapping, Sequence

import torch

from tunery.data.encode import conversation_from_json
from tunery.data.packing import unpack_row
from tunery.errors import DataError
from tunery.labels import IGNORE_INDEX

Row = Mapping[str, Sequence[int]]


def check_row(index: int, row: Row) -> None:
    """A corrupt cached row is caught here, with the way out, rather than as a shape error later."""
    ids, labels = row["input_ids"], row["labels"]
    if len(ids) != len(labels):
        raise DataError(
            f"Batch row {index} has {len(ids)} input_ids but {len(labels)} labels; "
            "re-encode the dataset (overwrite_cache: true)."
        )
    lens = list(row.get("seq_lens") or [len(ids)])
    if sum(lens) != len(ids) or min(lens) <= 0:
        raise DataError(
            f"Batch row {index} has seq_lens {lens} that do not tile its {len(ids)} tokens; "
            "re-encode the dataset (overwrite_cache: true)."
        )


def split_examples(rows: Sequence[Row]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every example in the batch, packed rows cut at their ``seq_lens``."""
    examples = []
    for index, row in enumerate(rows):
        check_row(index, row)
        examples.extend(unpack_row(row))
    if not examples:
        raise DataError("Cannot collate an empty batch; the dataset produced no examples.")
    return examples


def collate_flat(rows: Sequence[Row]) -> dict:
    """Flatten a batch into one padding-free row with per-example boundaries.

    Returns ``input_ids``, ``labels``, ``position_ids`` (all ``[1, T]`` int64),
    ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32 ``[n_examples + 1]``, cumulative
    example lengths starting at 0) and ``max_length_q``/``max_length_k`` (int),
    the keyword arguments transformers passes to FlashAttention-2 style kernels.
    Each example's first label is -100, so the last token of one example never
    learns to predict the first token of the next.
    """
    examples = split_examples(rows)
    lengths = torch.tensor([len(ids) for ids, _ in examples], dtype=torch.int32)
    input_ids = torch.tensor([tok for ids, _ in examples for tok in ids], dtype=torch.long)
    labels = torch.tensor([lab for _, labs in examples for lab in labs], dtype=torch.long)
    cu_seq_lens = torch.zeros(len(examples) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.cumsum(lengths, dim=0)
    labels[cu_seq_lens[:-1].long()] = IGNORE_INDEX
    starts = torch.repeat_interleave(cu_seq_lens[:-1].long(), lengths.long())
    position_ids = torch.arange(len(input_ids), dtype=torch.long) - starts
    max_length = int(lengths.max())
    return {
        "input_ids": input_ids.unsqueeze(0),
        "labels": labels.unsqueeze(0),
        "position_ids": position_ids.unsqueeze(0),
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens.clone(),
        "max_length_q": max_length,
        "max_length_k": max_length,
    }


FLAT_KEYS = frozenset(
    {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
)


def split_flat(batch: dict, max_tokens: int) -> list[dict]:
    """Cut a ``collate_flat`` batch into consecutive flat batches of whole examples, each at most
    ``max_tokens`` long (an example longer than that gets a piece of its own).

    Every example starts with label -100 and attends only to itself, so the pieces' summed
    losses equal the whole batch's loss, token for token. Anything that is not exactly a
    ``collate_flat`` batch (other keys, padded rows) comes back whole: its examples may be
    tied together (e.g. preference pairs). ``max_tokens`` <= 0 means no limit.
    """
    if max_tokens <= 0 or set(batch) != FLAT_KEYS or batch["input_ids"].shape[1] <= max_tokens:
        return [batch]
    bounds = batch["cu_seq_lens_q"].tolist()
    cuts = next_fit_cuts(bounds, max_tokens)
    return [slice_flat(batch, bounds, lo, hi) for lo, hi in itertools.pairwise(cuts)]


def next_fit_cuts(bounds: list[int], max_tokens: int) -> list[int]:
    """Indices into ``bounds`` (cumulative lengths) where pieces start, plus the last index.

    Next-fit: a piece grows until the next example would overflow it; that keeps the order
    and makes the fewest pieces.
    """
    cuts = [0]
    for index in range(1, len(bounds)):
        if bounds[index] - bounds[cuts[-1]] > max_tokens and index - 1 > cuts[-1]:
            cuts.append(index - 1)
    cuts.append(len(bounds) - 1)
    return cuts


def slice_flat(batch: dict, bounds: list[int], lo: int, hi: int) -> dict:
    """Examples ``lo`` .. ``hi - 1`` of a flat batch, as a flat batch of their own."""
    begin, end = bounds[lo], bounds[hi]
    cu_seq_lens = batch["cu_seq_lens_q"][lo : hi + 1] - begin
    max_length = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    return {
        "input_ids": batch["input_ids"][:, begin:end],
        "labels": batch["labels"][:, begin:end],
        "position_ids": batch["position_ids"][:, begin:end],
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens.clone(),
        "max_length_q": max_length,
        "max_length_k": max_length,
    }


def collate_padded(rows: Sequence[Row], pad_token_id: int) -> dict:
    """Right-pad the examples of a batch into ``[B, L]`` tensors with an ``attention_mask``.

    Packed rows are cut back into their examples (one padded row each), since a
    padded batch has no other way to keep them apart.
    """
    examples = split_examples(rows)
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for index, (ids, labs) in enumerate(examples):
        input_ids[index, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[index, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        attention_mask[index, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def count_label_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Tokens that carry a loss (a shifted label other than -100), for normalising accumulated losses."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def collate_prompts(rows: Sequence[Mapping]) -> dict:
    """A batch of RL prompt rows (``stage: ppo`` / ``grpo``) as plain lists, for rollouts and rewards.

    Returns ``prompt_ids`` (the rendered prompts, unpadded: generation pads them on the left),
    ``prompts`` (the text of each prompt's final user turn, what reward functions see as the
    prompt), ``reference`` (the dataset's answer, "" if none) and ``conversation`` (the prompt
    turns as JSON text, ``encode.conversation_from_json`` reads it; reward models render it
    together with a completion). Every key but ``prompt_ids`` and ``prompts`` is a per-row reward
    column (``reward_columns``).
    """
    if not rows:
        raise DataError("Cannot collate an empty batch; the dataset produced no prompts.")
    conversations = [row["conversation"] for row in rows]
    finals = [conversation_from_json(text).messages for text in conversations]
    return {
        "prompt_ids": [list(row["input_ids"]) for row in rows],
        "prompts": [messages[-1].content if messages else "" for messages in finals],
        "reference": [row.get("reference") or "" for row in rows],
        "conversation": conversations,
    }


def reward_columns(batch: Mapping) -> dict[str, list]:
    """The per-row columns of a ``collate_prompts`` batch that reward sources take (``reference``,
    ``conversation``): everything but the token ids and the prompt texts, which go separately."""
    return {key: list(values) for key, values in batch.items() if key not in ("prompt_ids", "prompts")}


def repeat_prompts(batch: Mapping, times: int) -> dict:
    """Every per-row list of ``batch`` with each row repeated ``times`` times in a row:
    [a, b] -> [a, a, b, b] for two samples per prompt (GRPO's groups stay contiguous)."""
    return {key: [value for value in values for _ in range(times)] for key, values in batch.items()}
