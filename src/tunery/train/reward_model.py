"""A reward model trained with stage ``rm``, loaded for scoring: the shared core of every scorer.

``RewardModel`` loads the model with its adapters merged, puts the value head
back on it (``value_head.safetensors``, saved by training beside the adapter or
full weights) and scores exactly as the rm stage does: a conversation is
rendered with the chat template as prompt + answer (``encode_one_turn``),
truncated as a training pair is (``join_examples``), batched the way training
batched (one flat row with per-example attention where the model allows it,
else right padding), and the reward is the head's value at the last token
(``rm.last_token_scores``).

Two front ends build on it: ``tunery.infer.reward.RewardScorer`` (``tunery
score``, ``POST /v1/score``) and the PPO reward source
(``tunery.train.reward_sources``), which lives in the train layer and so cannot
import the infer layer.
"""

import gc
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from tunery.config import RunConfig
from tunery.data.collate import collate_flat, collate_padded
from tunery.data.conversation import Conversation, Role
from tunery.data.encode import encode_one_turn, join_examples, split_response
from tunery.errors import DataError, ModelError
from tunery.model.attention import enable_varlen_attention, supports_varlen
from tunery.model.load import load_model
from tunery.train.stages.rm import VALUE_HEAD_FILE, attach_value_head, last_token_scores, load_value_head

logger = logging.getLogger(__name__)

ANSWER_ROLES = (Role.ASSISTANT, Role.FUNCTION_CALL)
PADDED_KERNELS = ("sdpa", "eager", "disabled")  # kernels that need padded batches (as in training)


def value_head_folder(config: RunConfig) -> Path | None:
    """Where the value head lives: the last adapter's folder, else a local model folder (full tuning)."""
    adapters = config.model.adapter_name_or_path
    folder = Path(adapters[-1] if adapters else config.model.model_name_or_path)
    return folder if (folder / VALUE_HEAD_FILE).is_file() else None


def is_reward_model(config: RunConfig) -> bool:
    return value_head_folder(config) is not None


class RewardModel:
    """A reward model loaded once; scores conversations (or token ids) in batches.

    ``tokenizer`` and ``template`` may be passed in when the caller already holds the very
    same ones (the PPO policy's, for a LoRA reward model on the policy's base model).
    """

    def __init__(self, config: RunConfig, tokenizer=None, template=None):
        self.config = config
        folder = value_head_folder(config)
        if folder is None:
            raise ModelError(no_value_head_message(config))
        if tokenizer is None or template is None:  # (imported here: train.run imports the stages)
            from tunery.train.run import load_tokenizer_and_template

            tokenizer, template = load_tokenizer_and_template(config)
        self.tokenizer, self.template = tokenizer, template
        self.lock = threading.Lock()  # one batch at a time (API requests arrive on worker threads)
        self.model = load_model(config, self.tokenizer, for_training=False)
        self.flat = self.choose_batching()
        attach_value_head(self.model)
        load_value_head(self.model, folder)
        logger.info("Loaded the value head from %s", folder / VALUE_HEAD_FILE)

    def choose_batching(self) -> bool:
        """Flat rows with per-example attention, as training chose them (``train.run.choose_batching``)."""
        kernel = self.config.model.flash_attn
        if kernel in PADDED_KERNELS or not supports_varlen(self.model):
            return False
        if kernel == "auto":
            enable_varlen_attention(self.model)
        return True  # fa2 keeps the examples of a flat row apart by itself

    def encode_conversation(self, conv: Conversation, cutoff_len: int) -> list[int]:
        """prompt + answer ids, truncated like one answer of a training pair."""
        default_system = self.config.data.default_system
        if not conv.system and default_system:  # as training does (``encode.raw_to_conversation``)
            conv = Conversation(messages=conv.messages, system=default_system, tools=conv.tools)
        prompt, answer = split_response(conv)
        prompt_ids, answer_ids = encode_one_turn(prompt, answer, self.tokenizer, self.template)
        input_ids, _, _ = join_examples(prompt_ids, [answer_ids], cutoff_len)
        return input_ids

    def score_conversations(
        self, conversations: Sequence[Conversation], max_length: int | None = None
    ) -> list[float]:
        """The reward of each conversation's final (assistant) answer, given the turns before it."""
        budget = max_length or self.config.data.cutoff_len
        rows = []
        for index, conv in enumerate(conversations):
            check_conversation(conv, index)
            rows.append(self.encode_conversation(conv, budget))
        return self.score_ids(rows)

    @torch.inference_mode()
    def score_ids(self, rows: list[list[int]]) -> list[float]:
        """Scores of token-id sequences, ``per_device_eval_batch_size`` at a time, in order."""
        size = self.config.training.per_device_eval_batch_size
        scores: list[float] = []
        with self.lock:
            for start in range(0, len(rows), size):
                batch = self.collate(rows[start : start + size])
                scores.extend(last_token_scores(self.model, batch).tolist())
        return scores

    def collate(self, rows: list[list[int]]) -> dict:
        examples = [{"input_ids": ids, "labels": ids} for ids in rows]
        if self.flat:
            batch = collate_flat(examples)
        else:
            pad_id = self.tokenizer.pad_token_id
            batch = collate_padded(examples, pad_id if pad_id is not None else 0)
        device = self.model.device
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value
                for key, value in batch.items()}

    def close(self) -> None:
        """Drop the weights (the caller may load another model next)."""
        with self.lock:
            del self.model
            gc.collect()

    def __enter__(self) -> "RewardModel":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def no_value_head_message(config: RunConfig) -> str:
    adapters = config.model.adapter_name_or_path
    where = f"adapter '{adapters[-1]}'" if adapters else f"model '{config.model.model_name_or_path}'"
    return (
        f"The {where} was not trained with stage rm: its folder has no {VALUE_HEAD_FILE}. "
        "Score with the output_dir of a `stage: rm` run (as adapter_name_or_path, or as "
        "model_name_or_path after full tuning)."
    )


def check_conversation(conv: Conversation, index: int) -> None:
    """A scored conversation: user/assistant turns ending with the answer to score."""
    messages = conv.messages
    if not messages or messages[-1].role not in ANSWER_ROLES:
        raise DataError(
            f"Conversation {index + 1} must end with the assistant answer to score "
            f"(it ends with {messages[-1].role.value if messages else 'nothing'})."
        )
    if len(messages) % 2:
        raise DataError(
            f"Conversation {index + 1} has {len(messages)} turns; it needs user/assistant pairs "
            "(after an optional system message) ending with the answer to score."
        )
