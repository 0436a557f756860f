"""Layer-wise GaLore: the same update as GaLoreAdamW, made per parameter during backward.

What makes it layer-wise (and worth its name): a parameter is updated and its gradient
freed as soon as backward has finished with it, while earlier layers still wait for
theirs; accumulation over passes, the LR schedule and exact resume still hold.
"""

import copy

import pytest
import torch
from train_helpers import build_loop, make_config, make_rows, tiny_model, trainable_state

from tunery.errors import ConfigError
from tunery.model.adapters import apply_finetuning
from tunery.train.layerwise import LayerwiseOptimizer
from tunery.train.schedule import create_optimizer

RANK = 4
GALORE = {"finetuning_type": "full", "use_galore": True, "galore_rank": RANK, "galore_update_interval": 2,
          "learning_rate": 1e-2}


def twin_models(tmp_path):
    """The same tiny model twice: plain GaLoreAdamW on one, the layer-wise optimizer on the other."""
    plain_config = make_config(tmp_path / "plain", **GALORE)
    layerwise_config = make_config(tmp_path / "layerwise", galore_layerwise=True, **GALORE)
    plain = apply_finetuning(tiny_model(), plain_config.finetuning)
    layerwise = copy.deepcopy(plain)
    plain_pair = (plain, create_optimizer(plain, plain_config))
    return plain_pair, (layerwise, create_optimizer(layerwise, layerwise_config))


def half_batches() -> list[dict]:
    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids[:2], "labels": ids[:2]}, {"input_ids": ids[2:], "labels": ids[2:]}]


def test_updates_equal_galore_adamw_with_gradients_accumulated_over_two_passes(tmp_path):
    (plain, plain_optimizer), (layerwise, optimizer) = twin_models(tmp_path)
    assert isinstance(optimizer, LayerwiseOptimizer)
    for _ in range(3):  # crosses a projection update (every 2 steps)
        first, last = half_batches()
        plain(**first).loss.backward()
        plain(**last).loss.backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad()

        layerwise(**first).loss.backward()  # not armed: accumulates like any pass
        with optimizer.stepping_in_backward():
            layerwise(**last).loss.backward()
        optimizer.step()  # the loop still calls it; the update already happened
        assert all(p.grad is None for p in layerwise.parameters())
    for (name, expected), found in zip(plain.named_parameters(), layerwise.parameters(), strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6, msg=name)
    projected = [o for o in optimizer.per_parameter if "rank" in o.param_groups[0]]
    assert len(projected) == 14  # 7 projections x 2 layers, each its own rank-sized state
    for sub in projected:
        state = next(iter(sub.state.values()))
        assert state["exp_avg"].numel() == RANK * max(sub.param_groups[0]["params"][0].shape)


def test_last_layer_is_updated_and_freed_before_the_first_layer_has_its_gradient(tmp_path):
    _, (model, optimizer) = twin_models(tmp_path)
    last_layer = model.model.layers[-1].mlp.down_proj.weight
    before = last_layer.detach().clone()
    seen = {}

    def when_first_layer_is_done(param):
        seen["last_layer_grad"] = last_layer.grad
        seen["last_layer_moved"] = not torch.equal(last_layer.detach(), before)

    model.model.layers[0].self_attn.q_proj.weight.register_post_accumulate_grad_hook(when_first_layer_is_done)
    batch = half_batches()[0]
    with optimizer.stepping_in_backward():
        model(**batch).loss.backward()
    assert seen == {"last_layer_grad": None, "last_layer_moved": True}


def test_schedule_reaches_every_per_parameter_optimizer(tmp_path):
    config = make_config(tmp_path, max_steps=4, warmup_steps=2, galore_layerwise=True, **GALORE)
    loop = build_loop(config, make_rows(8))
    loop.train()
    rates = {group["lr"] for sub in loop.layerwise.per_parameter for group in sub.param_groups}
    assert rates == {loop.scheduler.get_last_lr()[0]}


def test_training_loop_resumes_exactly(tmp_path):
    keys = {**GALORE, "galore_layerwise": True, "max_steps": 4, "save_steps": 2,
            "gradient_accumulation_steps": 2, "max_grad_norm": 1.0}
    rows = make_rows(16)
    straight = build_loop(make_config(tmp_path / "a", **keys), rows)
    metrics = straight.train()
    saved = torch.load(tmp_path / "a" / "checkpoint-2" / "optimizer.pt", map_location="cpu")
    assert len(saved["per_parameter"]) == sum(1 for p in straight.model.parameters() if p.requires_grad)

    checkpoint = str(tmp_path / "a" / "checkpoint-2")
    resumed_config = make_config(tmp_path / "a", resume_from_checkpoint=checkpoint, **keys)
    resumed = build_loop(resumed_config, rows, seed=1)
    resumed.train()
    expected, found = trainable_state(straight), trainable_state(resumed)
    for name, value in expected.items():
        assert torch.equal(found[name], value), name
    assert metrics["train_loss"] < 4.2  # log(64) = 4.16 at random init


@pytest.mark.parametrize(
    ("keys", "env", "message"),
    [({"fp16": True}, {}, "bf16"), ({}, {"WORLD_SIZE": "2"}, "single process")],
)
def test_refusals(tmp_path, monkeypatch, keys, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = make_config(tmp_path, galore_layerwise=True, **GALORE, **keys)
    model = apply_finetuning(tiny_model(), config.finetuning)
    with pytest.raises(ConfigError, match=message):
        create_optimizer(model, config)
