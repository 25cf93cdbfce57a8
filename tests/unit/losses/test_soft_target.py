"""soft_cross_entropy against float64 hand computation and torch's cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import dense_targets, mix_targets


def _data(b=16, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g) * 3
    targets = torch.softmax(torch.randn(b, c, generator=g), dim=-1)
    return logits, targets


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_float64_definition_and_gradient(reduction):
    logits, targets = _data()
    z = logits.clone().requires_grad_(True)
    loss = soft_cross_entropy(z, targets, reduction=reduction)
    z64 = logits.double().requires_grad_(True)
    per_row = -(targets.double() * torch.log_softmax(z64, -1)).sum(-1)
    ref = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    torch.testing.assert_close(loss.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    loss.sum().backward()
    ref.sum().backward()
    # d/dz = sum(t) * softmax(z) - t, per row (scaled by 1/B for the mean)
    torch.testing.assert_close(z.grad.double(), z64.grad, atol=1e-6, rtol=1e-5)


def test_equals_torch_cross_entropy_with_probability_targets():
    logits, targets = _data(b=33, c=100, seed=1)
    torch.testing.assert_close(soft_cross_entropy(logits, targets), F.cross_entropy(logits, targets))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_dense_smoothed_targets_equal_index_targets_with_label_smoothing(smoothing):
    logits, _ = _data(b=20, c=10, seed=2)
    labels = torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(0))
    dense = dense_targets(labels, 10, label_smoothing=smoothing)
    expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    torch.testing.assert_close(soft_cross_entropy(logits, dense), expected)
    # class indices pass straight through
    torch.testing.assert_close(soft_cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_mixed_targets_split_the_loss_by_lam():
    """With mixed one-hot targets the loss is lam * CE(y_i) + (1 - lam) * CE(y_j), per sample."""
    logits, _ = _data(b=8, c=5, seed=3)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    index = torch.arange(8).flip(0)
    lam = torch.linspace(0.1, 0.9, 8)
    mixed = mix_targets(dense_targets(labels, 5), index, lam)
    per_sample = soft_cross_entropy(logits, mixed, reduction="none")
    expected = lam * F.cross_entropy(logits, labels, reduction="none") + (1 - lam) * F.cross_entropy(
        logits, labels[index], reduction="none"
    )
    torch.testing.assert_close(per_sample, expected)


def test_bf16_logits_are_computed_in_float32():
    logits, targets = _data(b=64, c=50, seed=4)
    loss = soft_cross_entropy(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32
    ref = -(targets.double() * torch.log_softmax(logits.bfloat16().double(), -1)).sum(-1).mean()
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)


def test_errors_are_explained():
    logits, targets = _data()
    with pytest.raises(ValueError, match="logits' shape"):
        soft_cross_entropy(logits, targets[:, :3])
    with pytest.raises(ValueError, match="reduction"):
        soft_cross_entropy(logits, targets, reduction="avg")


def test_tensor_subclasses_keep_their_torch_function_handling():
    seen = []

    class Traced(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return super().__torch_function__(func, types, args, kwargs or {})

    logits = torch.randn(4, 3)
    targets = torch.softmax(torch.randn(4, 3), dim=1)
    loss = soft_cross_entropy(logits.as_subclass(Traced), targets)
    assert "cross_entropy" in seen
    torch.testing.assert_close(loss.as_subclass(torch.Tensor), F.cross_entropy(logits, targets))
