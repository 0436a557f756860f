"""Batched generation with a model's KV cache, shared by inference and RL rollouts.

``infer.engine.ChatEngine`` (chat, prediction, the API) and the PPO/GRPO stages
(``train.rollout``) both generate through ``generate_batch``: prompts are left
padded so every row's next token sits at the same position, ``generate`` runs
once for the whole batch with the KV cache on (also when the model trains with
gradient checkpointing, which turns the config's cache off), and the settings
come from the config's ``GenerationArgs``. Living here, below ``infer`` and
``train``, it lets training generate without importing the inference layer.
"""

from collections.abc import Sequence

import torch

from tunery.config.schema import GenerationArgs


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, width]``: prompts padded on the left."""
    width = max(len(prompt) for prompt in prompts)
    ids = [[pad_id] * (width - len(prompt)) + list(prompt) for prompt in prompts]
    mask = [[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def generate_kwargs(prompts: Sequence[Sequence[int]], settings: GenerationArgs, stop_ids: list[int],
                    pad_id: int, device: torch.device | str = "cpu") -> dict:
    """Keyword arguments of ``model.generate`` for ``prompts`` under ``settings``."""
    input_ids, attention_mask = left_pad(prompts, pad_id, device)
    sample = settings.do_sample and settings.temperature > 0
    kwargs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": sample,
        "num_beams": settings.num_beams,
        "repetition_penalty": settings.repetition_penalty,
        "eos_token_id": stop_ids,
        "pad_token_id": pad_id,
        "use_cache": True,  # training may have switched the config's cache off (gradient checkpointing)
    }
    if sample:
        kwargs |= {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
    else:  # a model's generation_config may default to sampling settings; greedy ignores them
        kwargs |= {"temperature": None, "top_p": None, "top_k": None}
    return kwargs


def cut_at_stop(generated: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """``(ids before the first stop token, whether one was found)``."""
    stop_at = next((i for i, token in enumerate(generated) if token in stop_ids), None)
    if stop_at is None:
        return list(generated), False
    return list(generated[:stop_at]), True


@torch.inference_mode()
def generate_batch(model: torch.nn.Module, prompts: Sequence[Sequence[int]], settings: GenerationArgs,
                   stop_ids: list[int], pad_id: int) -> list[list[int]]:
    """The ids each prompt's ``generate`` call produced after the prompt, one list per prompt, in order.

    Rows that stopped early are padded by ``generate`` (with ``pad_id``) up to the longest row;
    ``cut_at_stop`` recovers each reply. The caller chooses the model's mode (eval for rollouts).
    """
    device = next(model.parameters()).device
    kwargs = generate_kwargs(prompts, settings, stop_ids, pad_id, device)
    width = kwargs["input_ids"].shape[1]
    output = model.generate(**kwargs)
    return [row[width:].tolist() for row in output]
