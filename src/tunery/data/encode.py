"""Conversations and documents -> token ids and labels, shaped for a stage.

SFT follows LLaMA-Factory 0.9.5's supervised processor: the template encodes
each (prompt, response) turn pair; pairs are truncated one by one to fit
``cutoff_len`` with ``infer_seqlen`` (which keeps as much of the response as it
can); every response is learned unless ``mask_history`` (only the last one; the
pairs are then taken last-first so truncation drops early turns) and prompts are
masked unless ``train_on_prompt``. Templates with ``efficient_eos`` end the
example with one EOS and, on later turns, learn the EOS at the start of the
prompt (the end of the previous answer).

PT follows its pretrain processor: each text gets an EOS (and a BOS when the
tokenizer adds one), then texts are concatenated and cut into ``cutoff_len``
blocks (packing) or truncated one by one. Two deliberate differences: the last,
shorter block is kept rather than dropped, and BOS is prepended to each text
instead of overwriting the first token of each block; each block's
``seq_lens`` marks where texts start so they never attend to each other.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tunery.data.conversation import Conversation, Message, Role
from tunery.data.converters import RowError, to_conversation, to_document
from tunery.data.registry import DatasetSpec
from tunery.errors import DataError
from tunery.labels import IGNORE_INDEX


@dataclass(frozen=True)
class EncodeOptions:
    """The config fields that change how an example is encoded."""

    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    default_system: str | None = None


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """Lengths (source, target) after truncating a turn pair to ``cutoff_len`` tokens.

    A short target is kept whole and the source cut; a short source is kept and the
    target cut; otherwise both are cut in proportion to their lengths.
    """
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def encode_supervised(conv: Conversation, tokenizer, template, opts: EncodeOptions) -> tuple[list, list, int]:
    """``(input_ids, labels, full_length)``; full_length is the length before truncation."""
    if opts.mask_history and not getattr(template, "preserve_thinking", True):
        # LLaMA-Factory drops the thoughts of unlearned turns on reasoning templates
        pairs = template.encode_turns(tokenizer, conv, discard_history_cot=True)
    else:
        pairs = template.encode_turns(tokenizer, conv)
    efficient_eos = bool(getattr(template, "efficient_eos", False))
    eos_id = tokenizer.eos_token_id
    full_length = sum(len(s) + len(t) for s, t in pairs) + (1 if efficient_eos else 0)
    total = 1 if efficient_eos else 0  # room for the closing EOS
    if opts.mask_history:
        pairs = pairs[::-1]  # the last turn first: it is the one that is learned and kept
    input_ids: list[int] = []
    labels: list[int] = []
    for turn, (source, target) in enumerate(pairs):
        if total >= opts.cutoff_len:
            break
        source_len, target_len = infer_seqlen(len(source), len(target), opts.cutoff_len - total)
        source, target = source[:source_len], target[:target_len]
        total += source_len + target_len
        if opts.train_on_prompt:
            source_labels = list(source)
        elif efficient_eos and turn != 0:
            source_labels = [eos_id] + [IGNORE_INDEX] * (source_len - 1)
        else:
            source_labels = [IGNORE_INDEX] * source_len
        target_labels = [IGNORE_INDEX] * target_len if opts.mask_history and turn != 0 else list(target)
        if opts.mask_history:
            input_ids = list(source) + list(target) + input_ids
            labels = source_labels + target_labels + labels
        else:
            input_ids += list(source) + list(target)
            labels += source_labels + target_labels
    if efficient_eos:
        input_ids.append(eos_id)
        labels.append(eos_id)
    return input_ids, labels, full_length


def pretrain_eos_id(tokenizer, template) -> int:
    """The token that ends a pre-training text. Llama 3's chat EOS (<|eot_id|>) ends a turn,
    not a document, so it uses <|end_of_text|>, as LLaMA-Factory does."""
    if getattr(template, "name", None) == "llama3":
        token_id = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    return tokenizer.eos_token_id


def encode_texts(texts: Sequence[str], tokenizer, template) -> list[list[int]]:
    """Token ids of each text with its EOS (and BOS when the tokenizer adds one), batched."""
    if not texts:
        return []
    eos_id = pretrain_eos_id(tokenizer, template)
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id \
        is not None else []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [bos + list(ids) + [eos_id] for ids in encoded]


def chunk_texts(docs: Sequence[Sequence[int]], cutoff_len: int) -> list[dict]:
    """Concatenate token lists and cut them into rows of ``cutoff_len`` tokens (the last may be
    shorter); ``seq_lens`` are the lengths of the text pieces inside each row."""
    rows: list[dict] = []
    ids: list[int] = []
    seq_lens: list[int] = []
    for doc in docs:
        start = 0
        while start < len(doc):
            take = min(cutoff_len - len(ids), len(doc) - start)
            ids.extend(doc[start:start + take])
            seq_lens.append(take)
            start += take
            if len(ids) == cutoff_len:
                rows.append({"input_ids": ids, "labels": list(ids), "seq_lens": seq_lens})
                ids, seq_lens = [], []
    if ids:
        rows.append({"input_ids": ids, "labels": list(ids), "seq_lens": seq_lens})
    return rows


def raw_to_conversation(raw: str, spec: DatasetSpec, opts: EncodeOptions) -> Conversation:
    conv = to_conversation(json.loads(raw), spec)
    if not conv.system and opts.default_system:
        conv.system = opts.default_system  # LLaMA-Factory: default_system replaces the template's
    return conv


def encode_sft_batch(batch: dict, *, specs: Sequence[DatasetSpec], tokenizer, template,
                     opts: EncodeOptions) -> dict:
    """``datasets.map`` function: raw rows -> SFT examples, or an error per bad row."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "full_len": [], "error": []}
    for raw, index, error in zip(batch["raw"], batch["dataset"], batch["error"], strict=True):
        ids, labels, full_len = [], [], 0
        if not error:
            try:
                conv = raw_to_conversation(raw, specs[index], opts)
                ids, labels, full_len = encode_supervised(conv, tokenizer, template, opts)
            except (RowError, DataError) as err:  # DataError: the template cannot render the row
                error = str(err)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["full_len"].append(full_len)
        out["error"].append(error)
    return out


def encode_pt_batch(batch: dict, *, specs: Sequence[DatasetSpec], tokenizer, template) -> dict:
    """``datasets.map`` function: raw rows -> whole tokenized texts (chunked later), or errors."""
    texts: list[str] = []
    errors: list[str] = []
    for raw, index, error in zip(batch["raw"], batch["dataset"], batch["error"], strict=True):
        text = ""
        if not error:
            try:
                text = to_document(json.loads(raw), specs[index]).text
            except RowError as err:
                error = str(err)
        texts.append(text)
        errors.append(error)
    good = [i for i, error in enumerate(errors) if not error]
    encoded = dict(zip(good, encode_texts([texts[i] for i in good], tokenizer, template), strict=True))
    ids = [encoded.get(i, []) for i in range(len(texts))]
    return {"input_ids": ids, "full_len": [len(x) for x in ids], "error": errors}


# ----- preference stages: pairs (rm, dpo) and feedback (kto) -------------------------------------------
#
# A preference row holds two examples that belong together, stored like a packed row:
# ``input_ids``/``labels`` are the two examples one after the other and ``seq_lens`` their
# lengths. Collation then keeps them apart with per-example attention and in order, so a
# stage reads example 2k and 2k+1 of a batch as the pair of row k.


def encode_one_turn(conv: Conversation, response, tokenizer, template) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of ``conv``'s messages followed by ``response`` (LF's encode_oneturn)."""
    whole = Conversation(messages=[*conv.messages, response], system=conv.system, tools=conv.tools)
    pairs = template.encode_turns(tokenizer, whole)
    prompt = [i for source, target in pairs[:-1] for i in (*source, *target)] + list(pairs[-1][0])
    answer = list(pairs[-1][1])
    if getattr(template, "efficient_eos", False):
        answer.append(tokenizer.eos_token_id)
    return prompt, answer


def join_examples(
    prompt: list[int], answers: Sequence[list[int]], cutoff_len: int
) -> tuple[list, list, list]:
    """One row of ``prompt + answer`` examples, truncated together (answers share one length budget)."""
    source_len, target_len = infer_seqlen(len(prompt), max(len(a) for a in answers), cutoff_len)
    input_ids: list[int] = []
    labels: list[int] = []
    seq_lens: list[int] = []
    for answer in answers:
        kept = answer[:target_len]
        input_ids += prompt[:source_len] + kept
        labels += [IGNORE_INDEX] * source_len + kept
        seq_lens.append(source_len + len(kept))
    return input_ids, labels, seq_lens


def encode_pairwise(
    conv: Conversation, tokenizer, template, opts: EncodeOptions
) -> tuple[list, list, list, int]:
    """A ranking example as one row: chosen then rejected (both after the same prompt)."""
    if conv.chosen is None or conv.rejected is None:
        raise RowError("a preference row needs both a chosen and a rejected answer")
    prompt, chosen = encode_one_turn(conv, conv.chosen, tokenizer, template)
    _, rejected = encode_one_turn(conv, conv.rejected, tokenizer, template)
    full_len = len(prompt) + max(len(chosen), len(rejected))
    return (*join_examples(prompt, [chosen, rejected], opts.cutoff_len), full_len)


def split_response(conv: Conversation) -> tuple[Conversation, object]:
    """The conversation without its final answer, and that answer."""
    if not conv.messages:
        raise RowError("no turns")
    prompt = Conversation(messages=conv.messages[:-1], system=conv.system, tools=conv.tools, extra=conv.extra)
    return prompt, conv.messages[-1]


def encode_feedback(conv: Conversation, kl_answer, tokenizer, template, opts: EncodeOptions):
    """A KTO example (prompt + its answer) and its KL example (same prompt + another row's answer)."""
    if "kto_tag" not in conv.extra:
        raise RowError("a KTO row needs a true/false value in its kto_tag column")
    prompt, answer = split_response(conv)
    prompt_ids, answer_ids = encode_one_turn(prompt, answer, tokenizer, template)
    _, kl_ids = encode_one_turn(prompt, kl_answer, tokenizer, template)
    full_len = len(prompt_ids) + len(answer_ids)
    return (*join_examples(prompt_ids, [answer_ids, kl_ids], opts.cutoff_len), full_len)


def encode_pairwise_batch(batch: dict, *, specs: Sequence[DatasetSpec], tokenizer, template,
                          opts: EncodeOptions) -> dict:
    """``datasets.map`` function for rm/dpo: raw ranking rows -> pair rows, or an error per row."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "seq_lens": [], "full_len": [], "error": []}
    for raw, index, error in zip(batch["raw"], batch["dataset"], batch["error"], strict=True):
        row = ([], [], [], 0)
        if not error:
            try:
                row = encode_pairwise(raw_to_conversation(raw, specs[index], opts), tokenizer, template, opts)
            except (RowError, DataError) as err:
                error = str(err)
        for key, value in zip(("input_ids", "labels", "seq_lens", "full_len"), row, strict=True):
            out[key].append(value)
        out["error"].append(error)
    return out


def encode_feedback_batch(batch: dict, *, specs: Sequence[DatasetSpec], tokenizer, template,
                          opts: EncodeOptions) -> dict:
    """``datasets.map`` function for kto: each row's KL example borrows the next row's answer."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "seq_lens": [], "full_len": [], "kto_tag": [],
                            "error": []}
    conversations: list[Conversation | None] = []
    errors = list(batch["error"])
    for position, (raw, index) in enumerate(zip(batch["raw"], batch["dataset"], strict=True)):
        conv = None
        if not errors[position]:
            try:
                conv = raw_to_conversation(raw, specs[index], opts)
            except RowError as err:
                errors[position] = str(err)
        conversations.append(conv)
    usable = [conv for conv in conversations if conv is not None and conv.messages]
    for position, conv in enumerate(conversations):
        row, tag, error = ([], [], [], 0), False, errors[position]
        if conv is not None:
            try:  # a mismatched answer: the next usable row's (its own when it is alone)
                kl_answer = usable[(usable.index(conv) + 1) % len(usable)].messages[-1]
                row = encode_feedback(conv, kl_answer, tokenizer, template, opts)
                tag = bool(conv.extra["kto_tag"])
            except (RowError, DataError, ValueError) as err:
                error = str(err)
        for key, value in zip(("input_ids", "labels", "seq_lens", "full_len"), row, strict=True):
            out[key].append(value)
        out["kto_tag"].append(tag)
        out["error"].append(error)
    return out


# ----- RL stages: prompts to roll out (ppo, grpo) --------------------------------------------------------
#
# A row is one prompt: ``input_ids`` are the rendered conversation up to and including the
# assistant header (what the policy continues), ``reference`` the dataset's final answer ("" when
# the row has none; reward functions compare with it) and ``conversation`` the prompt turns as
# JSON (reward models render prompt + completion from it with their own template).

NO_ANSWER = "\x00no answer\x00"  # stands in for a missing answer while a row is converted


def prompt_only_row(row: dict, spec: DatasetSpec) -> tuple[dict, bool]:
    """The row with a stand-in answer when it has none (LLaMA-Factory's unsupervised processor
    gives such rows an empty answer too), and whether it was added."""
    if spec.formatting == "alpaca":
        column = spec.column("response")
        value = row.get(column) if column else None
        if column and (value is None or (isinstance(value, str) and not value.strip())):
            return {**row, column: NO_ANSWER}, True
        return row, False
    turns = row.get(spec.column("messages") or "")
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        return row, False  # the converter says what is wrong with it
    tags = spec.tags
    spoken = [turn for turn in turns if turn.get(tags["role_tag"]) != tags.get("system_tag")]
    if len(spoken) % 2 == 0:
        return row, False
    stand_in = {tags["role_tag"]: tags["assistant_tag"], tags["content_tag"]: NO_ANSWER}
    return {**row, spec.column("messages"): [*turns, stand_in]}, True


def conversation_to_json(conv: Conversation) -> str:
    messages = [{"role": message.role.value, "content": message.content} for message in conv.messages]
    return json.dumps({"system": conv.system, "tools": conv.tools, "messages": messages}, ensure_ascii=False)


def conversation_from_json(text: str) -> Conversation:
    """The inverse of ``conversation_to_json`` (the ``conversation`` column of RL prompt rows)."""
    data = json.loads(text)
    messages = [Message(Role(item["role"]), item["content"]) for item in data["messages"]]
    return Conversation(messages=messages, system=data.get("system", ""), tools=data.get("tools", ""))


def encode_rl_prompt(raw: str, spec: DatasetSpec, tokenizer, template,
                     opts: EncodeOptions) -> tuple[list[int], str, str]:
    """``(prompt ids, reference answer, prompt conversation as JSON)`` of one raw row.

    A prompt longer than ``cutoff_len`` is refused (the row is skipped and counted): cutting it
    would drop either the question or the assistant header the policy continues from.
    """
    row, stand_in = prompt_only_row(json.loads(raw), spec)
    conv = to_conversation(row, spec)
    if not conv.system and opts.default_system:
        conv.system = opts.default_system
    prompt, answer = split_response(conv)
    ids = template.encode_prompt(tokenizer, prompt)
    if len(ids) > opts.cutoff_len:
        raise RowError(f"the prompt is {len(ids)} tokens, longer than cutoff_len {opts.cutoff_len} "
                       "(raise cutoff_len or shorten the prompt)")
    return ids, "" if stand_in else answer.content, conversation_to_json(prompt)


def encode_prompt_batch(batch: dict, *, specs: Sequence[DatasetSpec], tokenizer, template,
                        opts: EncodeOptions) -> dict:
    """``datasets.map`` function for ppo/grpo: raw rows -> prompt rows, or an error per bad row."""
    out: dict[str, list] = {"input_ids": [], "reference": [], "conversation": [], "full_len": [], "error": []}
    for raw, index, error in zip(batch["raw"], batch["dataset"], batch["error"], strict=True):
        row = ([], "", "")
        if not error:
            try:
                row = encode_rl_prompt(raw, specs[index], tokenizer, template, opts)
            except (RowError, DataError) as err:  # DataError: the template cannot render the row
                error = str(err)
        for key, value in zip(("input_ids", "reference", "conversation"), row, strict=True):
            out[key].append(value)
        out["full_len"].append(len(row[0]))
        out["error"].append(error)
    return out
