"""Calibration losses: hand-worked values, torch references, dense/mixed targets, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_mix.losses import (
    BrierLoss,
    DCALoss,
    FLSD53Loss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    MbLSLoss,
    MDCALoss,
    MMCELoss,
    brier_loss,
    dca_loss,
    flsd53_loss,
    focal_loss,
    label_smoothing_cross_entropy,
    mbls_loss,
    mdca_loss,
    mmce_loss,
)

LN3 = math.log(3.0)


def _batch(b=16, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * 2, torch.randint(0, c, (b,), generator=g)


def test_focal_hand_worked_and_gamma_zero_is_cross_entropy():
    logits = torch.tensor([[0.0, LN3]])  # p = [0.25, 0.75]
    assert float(focal_loss(logits, torch.tensor([1]), gamma=2.0)) == pytest.approx(
        -(0.25**2) * math.log(0.75), rel=1e-6
    )
    assert float(focal_loss(logits, torch.tensor([0]), gamma=3.0)) == pytest.approx(
        -(0.75**3) * math.log(0.25), rel=1e-6
    )
    z, y = _batch()
    assert float(focal_loss(z, y, gamma=0.0)) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-6)
    assert float(FocalLoss(3.0)(z, y)) == pytest.approx(float(focal_loss(z, y, 3.0)))


def test_flsd53_hand_worked():
    # p_y = 0.1 < 0.2 -> gamma 5; p_y = 0.9 -> gamma 3
    logits = torch.tensor([[math.log(0.1), math.log(0.9)], [math.log(0.1), math.log(0.9)]])
    y = torch.tensor([0, 1])
    expected = [-(0.9**5) * math.log(0.1), -(0.1**3) * math.log(0.9)]
    got = flsd53_loss(logits, y, reduction="none")
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(FLSD53Loss()(logits, y)) == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_label_smoothing_matches_torch():
    z, y = _batch()
    for s in (0.0, 0.05, 0.1):
        assert float(label_smoothing_cross_entropy(z, y, s)) == pytest.approx(
            float(F.cross_entropy(z, y, label_smoothing=s)), rel=1e-6
        )
    assert float(LabelSmoothingCrossEntropy(0.1)(z, y)) == pytest.approx(
        float(F.cross_entropy(z, y, label_smoothing=0.1)), rel=1e-6
    )


def test_mbls_hand_worked():
    logits = torch.tensor([[0.0, 12.0, 1.0]])
    y = torch.tensor([1])
    ce = float(F.cross_entropy(logits, y))
    # distances to the max logit: 12, 0, 11 -> relu(d - 10) = 2, 0, 1
    assert float(mbls_loss(logits, y, margin=10.0, alpha=0.1)) == pytest.approx(ce + 0.1 * 3, rel=1e-6)
    assert float(MbLSLoss(margin=20.0)(logits, y)) == pytest.approx(ce, rel=1e-6)


def test_mdca_hand_worked():
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0]])  # p = [.25, .75], [.75, .25]
    y = torch.tensor([1, 1])
    ce = float(F.cross_entropy(logits, y))
    # mean p = [.5, .5], mean y = [0, 1] -> mean_c |diff| = 0.5
    assert float(mdca_loss(logits, y, beta=1.0)) == pytest.approx(ce + 0.5, rel=1e-6)
    assert float(MDCALoss(beta=0.0)(logits, y)) == pytest.approx(ce, rel=1e-6)


def test_dca_hand_worked():
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0]])  # confidences .75, .75; predictions 1, 0
    y = torch.tensor([1, 1])  # correct, wrong -> accuracy .5
    ce = float(F.cross_entropy(logits, y))
    assert float(dca_loss(logits, y, beta=2.0)) == pytest.approx(ce + 2 * 0.25, rel=1e-6)
    assert float(DCALoss(beta=1.0)(logits, y)) == pytest.approx(ce + 0.25, rel=1e-6)


def test_mmce_against_double_sum():
    z, y = _batch(b=12, seed=3)
    p = z.softmax(-1)
    conf, pred = p.max(-1)
    correct = (pred == y).float()
    total = 0.0
    for i in range(12):
        for j in range(12):
            k = math.exp(-abs(float(conf[i] - conf[j])) / 0.4)
            total += float(correct[i] - conf[i]) * float(correct[j] - conf[j]) * k
    expected = float(F.cross_entropy(z, y)) + 2.0 * math.sqrt(total / 144)
    assert float(mmce_loss(z, y, lam=2.0)) == pytest.approx(expected, rel=1e-5)
    assert float(MMCELoss(lam=2.0)(z, y)) == pytest.approx(expected, rel=1e-5)
    # hand-worked: one sample, confidence .75, wrong: MMCE^2 = (0 - .75)^2 * k(0) = .5625 -> .75
    one = torch.tensor([[0.0, LN3]])
    assert float(mmce_loss(one, torch.tensor([0]), lam=1.0)) == pytest.approx(math.log(4) + 0.75, rel=1e-6)


def test_brier_hand_worked():
    logits = torch.tensor([[0.0, LN3]])
    assert float(brier_loss(logits, torch.tensor([1]))) == pytest.approx(2 * 0.25**2, rel=1e-6)
    assert float(BrierLoss()(logits, torch.tensor([0]))) == pytest.approx(2 * 0.75**2, rel=1e-6)


LOSSES = [
    lambda z, t: focal_loss(z, t, 3.0),
    lambda z, t: flsd53_loss(z, t),
    lambda z, t: label_smoothing_cross_entropy(z, t, 0.1),
    lambda z, t: mbls_loss(z, t),
    lambda z, t: mdca_loss(z, t),
    lambda z, t: dca_loss(z, t),
    lambda z, t: mmce_loss(z, t),
    lambda z, t: brier_loss(z, t),
]


@pytest.mark.parametrize("loss", LOSSES)
def test_one_hot_dense_targets_equal_indices_and_gradients_are_finite(loss):
    z, y = _batch(seed=5)
    dense = F.one_hot(y, 5).float()
    assert float(loss(z, dense)) == pytest.approx(float(loss(z, y)), rel=1e-6)
    z = z.clone().requires_grad_(True)
    mixed = 0.7 * dense + 0.3 * dense.roll(1, 0)
    loss(z, mixed).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_per_sample_losses_are_linear_in_mixed_targets(index):
    """Focal, FLSD-53, label-smoothed CE and MbLS are linear in the target: mixing targets mixes losses."""
    loss = LOSSES[index]
    z, y = _batch(seed=6)
    a, b = F.one_hot(y, 5).float(), F.one_hot(y.roll(1), 5).float()
    mixed = loss(z, 0.7 * a + 0.3 * b)
    assert float(mixed) == pytest.approx(0.7 * float(loss(z, a)) + 0.3 * float(loss(z, b)), rel=1e-5)


def test_bf16_logits_compute_in_float32():
    z, y = _batch(seed=7)
    assert float(focal_loss(z.bfloat16(), y)) == pytest.approx(float(focal_loss(z.bfloat16().float(), y)), rel=1e-6)
    assert focal_loss(z.bfloat16(), y).dtype == torch.float32


def test_errors_are_clear():
    z, y = _batch()
    with pytest.raises(ValueError, match="logits' shape"):
        focal_loss(z, torch.rand(16, 4))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        brier_loss(z, y[:3])
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_cross_entropy(z, y, 1.0)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(z, y, gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(z, y, reduction="avg")
