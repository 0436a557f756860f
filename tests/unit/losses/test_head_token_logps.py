"""head_token_logps: per-token log-probs of a head's output, and their gradients, against
full logits + log_softmax. Preference losses weight every token differently, so the checks
backpropagate non-uniform per-token weights."""

import pytest
import torch

from tunery.losses.example_logps import head_token_logps
from tunery.losses.lm import LinearTokenLogps, LogitTransform

TARGETS = torch.tensor([1, 3, 5, 7, 9, 11, 2])


def head_and_hidden(bias: bool, dtype=torch.float32):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 16, bias=bias).to(dtype)
    hidden = torch.randn(len(TARGETS), 8, dtype=dtype, requires_grad=True)
    return head, hidden


def hand_token_logps(head, hidden, transform: LogitTransform) -> torch.Tensor:
    logits = head(hidden).float() * transform.scale
    if transform.softcap:
        logits = transform.softcap * torch.tanh(logits / transform.softcap)
    logits = logits / transform.temperature
    return torch.log_softmax(logits, dim=-1).gather(1, TARGETS[:, None]).squeeze(1)


TRANSFORMS = {
    "plain": LogitTransform(),
    "scaled": LogitTransform(scale=0.5),
    "softcap_and_temperature": LogitTransform(softcap=2.0, temperature=0.7),
}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_frozen_linear_head_matches_log_softmax_in_value_and_gradient(name, bias):
    head, hidden = head_and_hidden(bias)
    head.requires_grad_(False)
    transform = TRANSFORMS[name]
    weights = torch.linspace(-1.0, 2.0, len(TARGETS))  # a different upstream gradient per token

    ours = head_token_logps(head, hidden, TARGETS, transform, chunk_size=3)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), hidden)
    hand = hand_token_logps(head, hidden, transform)
    (hand_grad,) = torch.autograd.grad((hand * weights).sum(), hidden)

    assert ours.dtype == torch.float32
    assert torch.allclose(ours, hand, atol=1e-5)
    assert torch.allclose(ours_grad, hand_grad, atol=1e-5)


def test_frozen_linear_head_takes_the_fused_path(monkeypatch):
    calls = []
    original = LinearTokenLogps.apply
    monkeypatch.setattr(LinearTokenLogps, "apply", lambda *args: calls.append(1) or original(*args))
    head, hidden = head_and_hidden(bias=False)
    head.requires_grad_(False)
    head_token_logps(head, hidden, TARGETS, LogitTransform(), chunk_size=4)
    assert calls


def test_trainable_head_still_gets_its_weight_gradient():
    head, hidden = head_and_hidden(bias=True)
    weights = torch.linspace(-1.0, 2.0, len(TARGETS))
    ours = head_token_logps(head, hidden, TARGETS, LogitTransform(), chunk_size=3)
    ours_grads = torch.autograd.grad((ours * weights).sum(), [hidden, head.weight, head.bias])
    hand = hand_token_logps(head, hidden, LogitTransform())
    hand_grads = torch.autograd.grad((hand * weights).sum(), [hidden, head.weight, head.bias])
    for got, want in zip(ours_grads, hand_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_without_grad_no_gradient_is_worked_out():
    head, hidden = head_and_hidden(bias=False)
    head.requires_grad_(False)
    with torch.no_grad():
        ours = head_token_logps(head, hidden, TARGETS, LogitTransform(), chunk_size=3)
    assert not ours.requires_grad
    assert torch.allclose(ours, hand_token_logps(head, hidden.detach(), LogitTransform()), atol=1e-5)


def test_bf16_head_and_hidden_give_float32_logps_and_bf16_gradients():
    head, hidden = head_and_hidden(bias=False, dtype=torch.bfloat16)
    head.requires_grad_(False)
    weights = torch.linspace(-1.0, 2.0, len(TARGETS))
    ours = head_token_logps(head, hidden, TARGETS, LogitTransform(), chunk_size=3)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), hidden)
    hand = hand_token_logps(head, hidden, LogitTransform())
    (hand_grad,) = torch.autograd.grad((hand * weights).sum(), hidden)
    assert ours.dtype == torch.float32 and ours_grad.dtype == torch.bfloat16
    assert torch.allclose(ours, hand, atol=1e-2)
    assert torch.allclose(ours_grad.float(), hand_grad.float(), atol=2e-2)
