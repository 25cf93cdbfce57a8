"""AlignMixup's Sinkhorn plan and aligned mix: a hand-worked 3x3 plan, POT, the authors' code, properties."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "references"))
from alignmixup_authors import mixup_aligned

from lightning_mix.mixing.alignment import (
    align_and_mix,
    sinkhorn_plan,
    squared_distance_cost,
)


def test_sinkhorn_matches_a_hand_worked_3x3_plan():
    # cost 0 on the diagonal, 1 elsewhere, eps = 1: by symmetry the scalings are constant, so the
    # plan is K / sum(K) with K = exp(-C): diagonal 1 / (3 (1 + 2/e)), off-diagonal (1/e) / (3 (1 + 2/e))
    cost = (1.0 - torch.eye(3)).unsqueeze(0)
    plan = sinkhorn_plan(cost, eps=1.0, max_iter=200, threshold=None)[0]
    z = 3 * (1 + 2 / math.e)
    expected = torch.full((3, 3), (1 / math.e) / z) + torch.eye(3) * ((1 - 1 / math.e) / z)
    torch.testing.assert_close(plan, expected, rtol=1e-5, atol=1e-7)


def test_sinkhorn_matches_pot():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(0)
    for p, q, eps in ((3, 3, 0.5), (5, 4, 0.2), (6, 6, 0.1)):
        cost = torch.rand(1, p, q, generator=g, dtype=torch.float64)
        plan = sinkhorn_plan(cost, eps=eps, max_iter=5000, threshold=None)[0].double()
        a, b = torch.full((p,), 1.0 / p, dtype=torch.float64), torch.full((q,), 1.0 / q, dtype=torch.float64)
        reference = torch.as_tensor(
            ot.sinkhorn(
                a.numpy(), b.numpy(), cost[0].numpy(), eps, method="sinkhorn_log", numItermax=5000, stopThr=1e-12
            )
        )
        torch.testing.assert_close(plan, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("direction", [0, 1])
def test_aligned_mix_matches_the_authors_code(direction):
    g = torch.Generator().manual_seed(direction)
    feats = torch.rand(6, 5, 3, 3, generator=g)
    index = torch.randperm(6, generator=g)
    lam = 0.3
    expected = mixup_aligned(feats, index, lam, direction)
    got = align_and_mix(feats, index, torch.full((6,), lam), direction)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_alignment_undoes_a_spatial_permutation():
    g = torch.Generator().manual_seed(0)
    own = torch.randn(1, 4, 3, 3, generator=g) * 3
    perm = torch.randperm(9, generator=g)
    partner = own.flatten(2)[:, :, perm].view_as(own)  # the same features at shuffled positions
    feats = torch.cat([own, partner])
    index = torch.tensor([1, 0])
    mixed = align_and_mix(feats, index, torch.tensor([0.3, 0.3]), direction=0, eps=0.1, threshold=None, max_iter=500)
    # the partner re-arranged onto the sample is the sample itself, whatever lam
    torch.testing.assert_close(mixed[0], own[0], rtol=1e-3, atol=1e-3)
    assert squared_distance_cost(own.flatten(2).transpose(1, 2), partner.flatten(2).transpose(1, 2)).shape == (1, 9, 9)


def test_aligned_mix_passes_gradients_and_rejects_flat_features():
    feats = torch.rand(4, 3, 2, 2, requires_grad=True)
    align_and_mix(feats, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5), 1).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"feature maps \(B, C, \*spatial\)"):
        align_and_mix(torch.rand(4, 3), torch.arange(4), torch.ones(4), 0)
