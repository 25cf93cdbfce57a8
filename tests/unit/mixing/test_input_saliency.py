"""Input-gradient saliency: values against the hand-derived gradient of a linear model, no parameter gradients."""

from __future__ import annotations

import pytest
import torch

from lightning_mix.mixing.input_saliency import (
    input_gradient_saliency,
    pool_saliency,
    reduce_channels,
)


def _linear_case():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 3, 4))
    x = torch.randn(5, 2, 3, 3)
    y = torch.randint(0, 4, (5,))
    return model, x, y


def test_saliency_is_the_channel_rms_of_the_hand_derived_input_gradient():
    model, x, y = _linear_case()
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    probs = torch.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    # d mean_CE / d x_b = W^T (softmax_b - onehot_b) / B
    grad = ((probs - torch.eye(4)[y]) @ weight / x.shape[0]).view_as(x)
    expected = grad.square().mean(dim=1).sqrt()
    got = input_gradient_saliency(model, x, y)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    dense = torch.eye(4)[y]
    torch.testing.assert_close(input_gradient_saliency(model, x, dense), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        input_gradient_saliency(model, x, y, channel_reduce="mean_abs"), grad.abs().mean(1), rtol=1e-5, atol=1e-7
    )


def test_saliency_leaves_parameter_gradients_and_the_input_alone():
    model, x, y = _linear_case()
    assert all(p.grad is None for p in model.parameters())
    input_gradient_saliency(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad and x.grad is None
    # existing gradients are kept as they were
    model(x).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():  # and gradients are enabled inside even under no_grad
        sal = input_gradient_saliency(model, x, y)
    assert sal.abs().sum() > 0
    for p, g in zip(model.parameters(), before):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_reduce_channels_rejects_unknown_reductions_and_integer_inputs():
    with pytest.raises(ValueError, match="channel_reduce must be one of"):
        reduce_channels(torch.zeros(1, 2, 3), "sum")
    with pytest.raises(TypeError, match="floating-point inputs"):
        input_gradient_saliency(torch.nn.Identity(), torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(1))


def test_pool_saliency_block_means_sum_to_one_and_zero_maps_become_uniform():
    sal = torch.arange(16.0).view(1, 4, 4).repeat(2, 1, 1)
    sal[1] = 0
    pooled = pool_saliency(sal, (2, 2))
    blocks = torch.tensor([[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]) / 4.0
    torch.testing.assert_close(pooled[0], blocks / blocks.sum())
    torch.testing.assert_close(pooled[1], torch.full((2, 2), 0.25))


def test_input_gradient_keeps_the_loss_graph_only_when_asked():
    from lightning_mix.mixing.input_saliency import input_gradient, input_gradient_saliency

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))
    gradient, loss = input_gradient(model, x, y)
    assert loss.grad_fn is None and all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(gradient.square().mean(dim=1).sqrt(), input_gradient_saliency(model, x, y))
    gradient_kept, loss_kept = input_gradient(model, x, y, keep_graph=True)
    torch.testing.assert_close(gradient_kept, gradient)
    loss_kept.backward()  # the retained graph reaches the parameters: the clean loss's gradient
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, want)
