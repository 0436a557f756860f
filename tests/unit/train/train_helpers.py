"""Tiny in-memory models, rows and configs shared by the training-loop tests."""

import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunery.config.load import build_config
from tunery.model.adapters import apply_finetuning
from tunery.model.attention import enable_varlen_attention
from tunery.train.loop import TrainLoop
from tunery.train.stages import get_stage

VOCAB = 64


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return enable_varlen_attention(LlamaForCausalLM(config))


def make_rows(n: int, seed: int = 0, prompt_masked: bool = True) -> list[dict]:
    """Rows of 4-12 tokens; the first third of each is an unlearned prompt when ``prompt_masked``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(4, 13))]
        cut = len(ids) // 3 if prompt_masked else 0
        rows.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return rows


def make_config(output_dir, **keys):
    flat = {
        "output_dir": str(output_dir), "logging_steps": 1, "save_steps": 1000, "learning_rate": 1e-3,
        "lora_rank": 4, "max_grad_norm": 0.0, "num_train_epochs": 1, "per_device_train_batch_size": 1,
        **keys,
    }
    return build_config(flat)


def build_loop(config, rows, eval_rows=None, seed: int = 0, adapter_seed: int | None = None) -> TrainLoop:
    """A loop over a LoRA (or full/freeze) tiny model; ``adapter_seed`` varies only the new LoRA weights."""
    model = tiny_model(seed)
    if adapter_seed is not None:
        torch.manual_seed(adapter_seed)
    model = apply_finetuning(model, config.finetuning)
    stage = get_stage(config.finetuning.stage, config)
    return TrainLoop(config, model, None, stage, rows, eval_rows)


def trainable_state(loop: TrainLoop) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in loop.model.named_parameters() if p.requires_grad}
