"""NEFTune: uniform embedding noise of half-width alpha / sqrt(L * d), in training mode only."""

import math

import pytest
import torch
from train_tiny import save_tiny_model
from transformers import AutoModelForCausalLM

from tunery.config.schema import FinetuningArgs, RunConfig
from tunery.model.adapters import apply_finetuning
from tunery.model.neftune import enable_neftune, neftune_magnitude

ALPHA = 5.0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-neftune"))


def fresh(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


def ids(length: int = 40) -> torch.Tensor:
    return torch.randint(3, 200, (4, length), generator=torch.Generator().manual_seed(0))


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(input_ids)


def test_magnitude_formula():
    assert neftune_magnitude(5.0, 100, 64) == pytest.approx(5.0 / 80)


@pytest.mark.parametrize("length", [16, 64])
def test_training_noise_is_uniform_with_the_formula_scale(tiny_dir, length):
    model = fresh(tiny_dir)
    clean = embed(model, ids(length))
    enable_neftune(model, ALPHA)
    model.train()
    torch.manual_seed(0)
    noise = embed(model, ids(length)) - clean
    hidden = clean.size(-1)
    magnitude = ALPHA / math.sqrt(length * hidden)
    assert noise.abs().max() <= magnitude * (1 + 1e-5)
    # Uniform(-m, m): mean 0, std m / sqrt(3), and it reaches close to both ends
    n = noise.numel()
    assert abs(noise.mean().item()) < 4 * magnitude / math.sqrt(3 * n)
    assert noise.std().item() == pytest.approx(magnitude / math.sqrt(3), rel=0.05)
    assert noise.max().item() > 0.98 * magnitude and noise.min().item() < -0.98 * magnitude


def test_eval_mode_is_unchanged_and_training_differs(tiny_dir):
    reference = fresh(tiny_dir)
    model = apply_finetuning(fresh(tiny_dir), FinetuningArgs(finetuning_type="full"),
                             run_config=RunConfig.model_validate({"methods": {"neftune_noise_alpha": ALPHA}}))
    batch = ids()
    model.eval()
    torch.testing.assert_close(embed(model, batch), embed(reference, batch))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=batch).logits, reference(input_ids=batch).logits)
        generated = model.generate(batch[:1, :8], max_new_tokens=5, do_sample=False)
        expected = reference.generate(batch[:1, :8], max_new_tokens=5, do_sample=False)
    assert torch.equal(generated, expected)
    model.train()
    assert not torch.allclose(embed(model, batch), embed(reference, batch))


def test_lora_model_gets_the_hook_too(tiny_dir):
    config = RunConfig.model_validate({"methods": {"neftune_noise_alpha": ALPHA}})
    model = apply_finetuning(fresh(tiny_dir), FinetuningArgs(lora_rank=4), run_config=config)
    batch = ids()
    model.train()
    noisy = embed(model, batch)
    model.eval()
    assert not torch.allclose(noisy, embed(model, batch))


def test_noise_is_fresh_each_forward_and_gradients_still_flow(tiny_dir):
    model = fresh(tiny_dir)
    enable_neftune(model, ALPHA)
    model.train()
    batch = ids()
    torch.manual_seed(1)
    first = model(input_ids=batch, labels=batch).loss
    torch.manual_seed(2)
    second = model(input_ids=batch, labels=batch).loss
    assert first.item() != second.item()  # fresh noise each forward
    first.backward()
    assert model.get_input_embeddings().weight.grad is not None
