"""GaLore: targeted matrices keep rank-sized Adam states, the rest full-sized; the loss falls."""

import pytest
import torch
from train_helpers import build_loop, make_config, make_rows, tiny_model

from tunery.errors import ConfigError
from tunery.model.adapters import apply_finetuning
from tunery.train.schedule import create_optimizer

RANK = 4


def galore_setup(tmp_path, **keys):
    config = make_config(tmp_path, finetuning_type="full", use_galore=True, galore_rank=RANK,
                         galore_update_interval=2, learning_rate=1e-2, **keys)
    model = apply_finetuning(tiny_model(), config.finetuning)
    return model, create_optimizer(model, config)


def batch() -> dict:
    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def step(model, optimizer) -> float:
    loss = model(**batch()).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def test_targeted_matrices_have_rank_sized_states(tmp_path):
    model, optimizer = galore_setup(tmp_path)
    step(model, optimizer)
    linears = {id(m.weight) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert len(linears) == 14  # 7 projections x 2 layers
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        if id(param) in linears:
            assert RANK in state["exp_avg"].shape and state["exp_avg"].numel() < param.numel(), name
            assert state["exp_avg"].shape == state["exp_avg_sq"].shape
            # "std" projects the shorter side of the matrix onto rank directions
            assert state["exp_avg"].numel() == RANK * max(param.shape), name
        else:  # embeddings, head, norms: plain AdamW states
            assert state["exp_avg"].shape == param.shape, name
    galore_groups = [g for g in optimizer.param_groups if "rank" in g]
    assert {g["rank"] for g in galore_groups} == {RANK}
    assert all(g["update_proj_gap"] == 2 and g["scale"] == 2.0 and g["proj_type"] == "std"
               for g in galore_groups)


def test_named_targets_only(tmp_path):
    model, optimizer = galore_setup(tmp_path, galore_target="q_proj,v_proj")
    step(model, optimizer)
    for name, param in model.named_parameters():
        projected = name.endswith(("q_proj.weight", "v_proj.weight"))
        assert (optimizer.state[param]["exp_avg"].shape != param.shape) == projected, name


def test_loss_falls(tmp_path):
    model, optimizer = galore_setup(tmp_path)
    losses = [step(model, optimizer) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.5
    assert all(torch.isfinite(torch.tensor(losses)))


def test_training_loop_checkpoints_and_reloads_galore_state(tmp_path):
    config = make_config(tmp_path, finetuning_type="full", use_galore=True, galore_rank=RANK,
                         max_steps=2, save_steps=2)
    loop = build_loop(config, make_rows(8))
    loop.run()
    optimizer_file = next(tmp_path.glob("checkpoint-2/optimizer.pt"))
    state = torch.load(optimizer_file, map_location="cpu")  # as resuming reads it (weights-only)
    assert any(s["exp_avg"].shape[0] == RANK or s["exp_avg"].shape[1] == RANK
               for s in state["state"].values() if s["exp_avg"].ndim == 2)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"finetuning_type": "lora"}, "finetuning_type: full"),
        ({"finetuning_type": "full", "galore_target": "nothing_here"}, "matches no trainable"),
    ],
)
def test_galore_misconfigurations(tmp_path, keys, message):
    config = make_config(tmp_path, use_galore=True, **keys)
    model = apply_finetuning(tiny_model(), config.finetuning)
    with pytest.raises(ConfigError, match=message):
        create_optimizer(model, config)
