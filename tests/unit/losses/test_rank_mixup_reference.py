"""mixup_ranking_loss against the RankMixup authors' MRL (tests/references/rankmixup_mrl.py).

Ours is ``mean(mask * hinge)``, the quantity the paper describes; the authors' code computes
``mean(mask) * mean(hinge)`` through a broadcasting artefact. The two agree when no pair is masked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "references"))
from rankmixup_mrl import authors_mrl  # noqa: E402

from lightning_mix.losses import mixup_ranking_loss  # noqa: E402
from lightning_mix.mixing import dense_targets, mix_targets  # noqa: E402


def _batch(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = labels.shape[0]
    logits, mixed_logits = torch.randn(b, 5, generator=g) * 3, torch.randn(b, 5, generator=g) * 3
    index = torch.randperm(b, generator=g)
    lam = torch.full((b,), 0.7)
    mixed_targets = mix_targets(dense_targets(labels, 5), index, lam)
    return logits, mixed_logits, index, mixed_targets


def test_equals_the_authors_value_when_no_pair_is_masked():
    labels = torch.arange(8) % 4
    logits, mixed, index, targets = _batch(labels)
    index = (torch.arange(8) + 1) % 8  # partner of another class for every sample
    targets = mix_targets(dense_targets(labels, 5), index, torch.full((8,), 0.7))
    ours = mixup_ranking_loss(logits, mixed, index, labels, margin=2.0)
    torch.testing.assert_close(ours, authors_mrl(logits, mixed, targets, 2.0))


def test_with_masked_pairs_ours_is_mean_of_masked_hinge_and_theirs_the_product_of_means():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    logits, mixed, _, _ = _batch(labels, seed=3)
    index = torch.tensor([1, 0, 3, 2, 6, 7, 4, 5])  # two same-class pairs, four mixed across classes
    targets = mix_targets(dense_targets(labels, 5), index, torch.full((8,), 0.7))
    hinge = torch.relu(mixed.max(1).values - logits.max(1).values + 2.0)
    mask = (labels != labels[index]).float()
    assert 0 < mask.sum() < 8  # some same-class pairs
    ours = mixup_ranking_loss(logits, mixed, index, labels, margin=2.0)
    theirs = authors_mrl(logits, mixed, targets, 2.0)
    torch.testing.assert_close(ours, (mask * hinge).mean())
    torch.testing.assert_close(theirs, mask.mean() * hinge.mean())
    assert not torch.allclose(ours, theirs)
