"""Pair batches that encode the shared prompt once give the plain layout's log-probs and gradients."""

import pytest
import torch
from train_tiny import save_tiny_model

from tunery.config import load_config
from tunery.data.collate import collate_flat
from tunery.data.pipeline import prepare_data
from tunery.data.shared_prefix import (
    collate_shared_pairs,
    group_by_tokens,
    pair_examples,
    shared_prefix_length,
)
from tunery.losses.example_logps import example_logps
from tunery.model.attention import enable_varlen_attention
from tunery.model.load import load_model
from tunery.train.run import load_tokenizer_and_template
from tunery.train.stages import get_stage
from tunery.train.stages.rm import attach_value_head, last_token_scores


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def pair_rows(model_dir, stage: str, count: int = 4):
    dataset = "kto_demo" if stage == "kto" else "preference_demo"
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml", f"stage={stage}",
                                f"dataset={dataset}", "dataset_dir=builtin", f"max_samples={count}"])
    tokenizer, template = load_tokenizer_and_template(config)
    rows = prepare_data(config, tokenizer, template).train
    model = load_model(config, tokenizer, for_training=False)
    enable_varlen_attention(model)
    return config, tokenizer, [rows[i] for i in range(count)], model


def test_the_prompt_is_stored_once_and_each_answer_keeps_its_positions(model_dir):
    _, _, rows, _ = pair_rows(model_dir, "dpo", count=2)
    batch = collate_shared_pairs(rows)
    pairs = pair_examples(rows)
    prefixes = [shared_prefix_length(*pair) for pair in pairs]
    assert all(prefix > 0 for prefix in prefixes), "chosen and rejected answer the same prompt"
    total = sum(len(row["input_ids"]) for row in rows)
    assert batch["input_ids"].shape[1] == total - sum(prefixes)
    (first, second), prefix = pairs[0], prefixes[0]
    positions = batch["position_ids"][0].tolist()
    assert positions[: len(first[0])] == list(range(len(first[0])))
    assert positions[len(first[0]) : len(first[0]) + len(second[0]) - prefix] == list(
        range(prefix, len(second[0])))
    assert batch["pair_layout"][0].tolist() == [prefix, len(first[0]) - prefix, len(second[0]) - prefix]


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_log_probs_and_gradients_equal_the_plain_flat_layout(model_dir, stage):
    _, _, rows, model = pair_rows(model_dir, stage)
    model.requires_grad_(True)
    shared, shared_tokens = example_logps(model, collate_shared_pairs(rows))
    (shared * torch.linspace(0.5, 1.5, len(shared))).sum().backward()
    shared_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain, plain_tokens = example_logps(model, collate_flat(rows))
    (plain * torch.linspace(0.5, 1.5, len(plain))).sum().backward()
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(shared_tokens, plain_tokens)
    for shared_grad, param in zip(shared_grads, model.parameters(), strict=True):
        torch.testing.assert_close(shared_grad, param.grad, rtol=1e-4, atol=1e-5)


def test_reward_scores_read_the_last_token_of_each_answer(model_dir):
    _, _, rows, model = pair_rows(model_dir, "rm")
    attach_value_head(model)
    torch.nn.init.normal_(model.get_decoder().norm.weight)  # a head that is not all zeros
    torch.nn.init.normal_(model.v_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(last_token_scores(model, collate_shared_pairs(rows)),
                                   last_token_scores(model, collate_flat(rows)), rtol=1e-5, atol=1e-5)


def test_a_batch_split_into_smaller_passes_gives_the_same_log_probs(model_dir):
    config, tokenizer, rows, model = pair_rows(model_dir, "dpo")
    stage = get_stage("dpo", config, tokenizer)
    batch = stage.collate(rows)
    budget = max(collate_shared_pairs([row])["input_ids"].shape[1] for row in rows)
    pieces = stage.split(batch, budget)
    assert len(pieces) > 1 and sum(piece["pair_count"] for piece in pieces) == len(rows)
    with torch.no_grad():
        whole = example_logps(model, batch)[0]
        parts = torch.cat([example_logps(model, piece)[0] for piece in pieces])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    assert group_by_tokens(rows, 0) == [(0, len(rows))]
