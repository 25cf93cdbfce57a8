"""CMixupBatchSampler and PartnerMixup: C-Mixup's partners from the whole training set, one lam per batch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_mix.mixing import CMixupBatchSampler, PartnerMixup, label_kernel_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "references"))
from cmixup_rate import authors_mixup_sample_rate  # noqa: E402

LABELS = torch.tensor([0.0, 0.3, 1.0, 2.5, -1.0, 0.1])


def _hand_probabilities(y: torch.Tensor, s: float, exclude_self: bool = False) -> torch.Tensor:
    y = y.double().reshape(len(y), -1)
    k = torch.exp(-((y[:, None, :] - y[None, :, :]) ** 2).sum(-1) / (2 * s * s))
    if exclude_self:
        k.fill_diagonal_(0)
    return k / k.sum(1, keepdim=True)


def test_kernel_rows_match_hand_computation_and_the_authors_rate():
    s = 0.7
    expected = _hand_probabilities(LABELS, s)
    rows = label_kernel_rows(LABELS[[2, 0]], LABELS, s)
    torch.testing.assert_close(rows, expected[[2, 0]])
    authors = torch.from_numpy(authors_mixup_sample_rate(LABELS.numpy(), s))
    torch.testing.assert_close(label_kernel_rows(LABELS, LABELS, s), authors, atol=1e-12, rtol=1e-9)
    # (N, d) labels: Euclidean distance, as the authors' KernelDensity on 2-D rows
    y2 = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        label_kernel_rows(y2, y2, 1.3),
        torch.from_numpy(authors_mixup_sample_rate(y2.numpy(), 1.3)),
        atol=1e-12,
        rtol=1e-9,
    )
    excluded = label_kernel_rows(LABELS[[1]], LABELS, s, anchor_index=torch.tensor([1]))
    torch.testing.assert_close(excluded, _hand_probabilities(LABELS, s, exclude_self=True)[[1]])


def _partner_counts(sampler: CMixupBatchSampler, epochs: int) -> np.ndarray:
    n = sampler.labels.shape[0]
    counts = np.zeros((n, n))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            half = len(batch) // 2
            np.add.at(counts, (batch[:half], batch[half:]), 1)
    return counts


@pytest.mark.parametrize("exclude_self", [False, True])
def test_partner_frequencies_follow_the_kernel_over_the_whole_training_set(exclude_self):
    """Chi-square per anchor: the partners of every anchor follow P(j | i) over all N samples, not the batch."""
    s = 0.8
    sampler = CMixupBatchSampler(LABELS, batch_size=2, bandwidth=s, seed=3, exclude_self=exclude_self)
    counts = _partner_counts(sampler, epochs=3000)
    expected = _hand_probabilities(LABELS, s, exclude_self).numpy()
    for i in range(len(LABELS)):
        support = expected[i] > 0
        assert counts[i, ~support].sum() == 0
        observed = counts[i, support]
        p = scipy.stats.chisquare(observed, observed.sum() * expected[i, support]).pvalue
        assert p > 1e-3, (i, observed, expected[i])
    # partners outside the anchor's batch of 2 are drawn: every pair (i, j) with P > 1e-3 occurs
    assert (counts[expected > 1e-3] > 0).all()


def test_batches_cover_the_epoch_and_drop_the_last_incomplete_one_by_default():
    labels = torch.linspace(0, 1, 10)
    sampler = CMixupBatchSampler(labels, batch_size=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 and all(len(b) == 8 for b in batches)
    anchors = [i for b in batches for i in b[:4]]
    assert len(set(anchors)) == 8
    full = CMixupBatchSampler(labels, batch_size=4, seed=0, drop_last=False)
    batches = list(full)
    assert len(full) == 3 and sorted(i for b in batches for i in b[: len(b) // 2]) == list(range(10))
    assert len(batches[-1]) == 4  # 2 anchors, 2 partners


def test_seeded_and_epoch_dependent():
    labels = torch.randn(50, generator=torch.Generator().manual_seed(1))
    a, b = CMixupBatchSampler(labels, 8, seed=5), CMixupBatchSampler(labels, 8, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(CMixupBatchSampler(labels, 8, seed=6)) != first


def test_resume_inside_an_epoch_continues_the_uninterrupted_sequence():
    labels = torch.randn(40, generator=torch.Generator().manual_seed(2))
    reference = CMixupBatchSampler(labels, 5, seed=1)
    reference.set_epoch(2)
    expected = list(reference)
    interrupted = CMixupBatchSampler(labels, 5, seed=1)
    interrupted.set_epoch(2)
    it = iter(interrupted)
    seen = [next(it) for _ in range(3)]
    state = interrupted.state_dict()
    assert state == {"seed": 1, "epoch": 2, "batches_yielded": 3}
    resumed = CMixupBatchSampler(labels, 5, seed=999)
    resumed.load_state_dict(state)
    assert seen + list(resumed) == expected
    assert list(resumed) == expected  # the next iteration is a whole epoch again


def test_ranks_split_the_epoch_without_sharing_anchors():
    labels = torch.randn(30, generator=torch.Generator().manual_seed(3))
    shards = [list(CMixupBatchSampler(labels, 4, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    anchors = [set(i for b in shard for i in b[:4]) for shard in shards]
    assert not anchors[0] & anchors[1]
    whole = list(CMixupBatchSampler(labels, 4, seed=0))
    assert shards[0] == whole[0:6:2] and shards[1] == whole[1:6:2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": torch.tensor([0, 1, 2])}, "float labels"),
        ({"labels": torch.tensor([0.0, float("nan")])}, "NaN"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"batch_size": 20}, "no batch of 20"),
        ({"num_replicas": 2, "rank": 2}, "rank must lie"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(kwargs, match):
    args = {"labels": torch.arange(10.0), "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        CMixupBatchSampler(**args)


def test_a_sampler_given_as_labels_names_the_distributed_fix():
    """Under DDP without use_distributed_sampler=False Lightning calls CMixupBatchSampler(sampler, batch_size=...)."""
    from torch.utils.data import SequentialSampler

    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        CMixupBatchSampler(SequentialSampler(range(10)), batch_size=4, drop_last=True)


def test_partner_mixup_uses_one_lam_per_batch_and_mixes_row_i_with_row_b_plus_i():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randn(8, generator=torch.Generator().manual_seed(1))
    mixed = PartnerMixup(alpha=2.0)(x, y, generator=torch.Generator().manual_seed(4))
    lam = mixed.lam
    assert mixed.inputs.shape == (4, 3) and mixed.targets.shape == (4,)
    assert torch.equal(mixed.index, torch.arange(4, 8))
    assert torch.all(lam == lam[0]) and 0 < lam[0] < 1
    torch.testing.assert_close(mixed.inputs, lam[0] * x[:4] + (1 - lam[0]) * x[4:])
    torch.testing.assert_close(mixed.targets, lam[0] * y[:4] + (1 - lam[0]) * y[4:])
    again = PartnerMixup(alpha=2.0)(x, y, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again.lam, lam)


def test_partner_mixup_lam_follows_beta_alpha_alpha():
    g = torch.Generator().manual_seed(0)
    x, y = torch.zeros(4, 1), torch.zeros(4)
    draws = torch.stack([PartnerMixup(alpha=2.0)(x, y, g).lam[0] for _ in range(2000)]).double().numpy()
    assert scipy.stats.kstest(draws, scipy.stats.beta(2.0, 2.0).cdf).pvalue > 1e-3


def test_partner_mixup_refuses_an_odd_batch():
    with pytest.raises(ValueError, match="2B rows.*CMixupBatchSampler"):
        PartnerMixup()(torch.zeros(5, 2), torch.zeros(5))
