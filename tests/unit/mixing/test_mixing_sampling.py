"""Beta draws with a generator, lam modes and the simple pairing rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_mix.mixing import expand_draws, make_pairing, sample_beta, sample_lam


@pytest.mark.parametrize("a,b", [(0.4, 0.4), (1.0, 1.0), (2.0, 2.0), (2.0, 5.0), (0.5, 3.0), (10.0, 10.0)])
def test_sample_beta_matches_scipy(a, b):
    x = sample_beta(a, b, 20000, generator=torch.Generator().manual_seed(11)).double().numpy()
    ref = scipy.stats.beta(a, b)
    assert scipy.stats.kstest(x, ref.cdf).pvalue > 1e-3
    assert abs(x.mean() - ref.mean()) < 5 * math.sqrt(ref.var() / x.size)
    assert abs(x.var() / ref.var() - 1) < 0.05


@pytest.mark.parametrize("a", [0.1, 0.2])
def test_sample_beta_small_alpha_moments(a):
    """Small alpha puts mass within float32 rounding of 0 and 1 (so no KS test there); moments match."""
    x = sample_beta(a, a, 50000, generator=torch.Generator().manual_seed(0)).double().numpy()
    ref = scipy.stats.beta(a, a)
    assert abs(x.mean() - 0.5) < 5 * math.sqrt(ref.var() / x.size)
    assert abs(x.var() / ref.var() - 1) < 0.02
    # the U-shape: the fraction within 0.01 of an end
    frac = np.mean((x < 0.01) | (x > 0.99))
    assert abs(frac - 2 * ref.cdf(0.01)) < 0.01


@pytest.mark.parametrize("a,b", [(0.05, 0.05), (0.1, 0.1), (0.2, 0.2), (0.1, 0.3)])
def test_sample_beta_small_alpha_matches_scipy_in_float64(a, b):
    """Regression: the draws were computed in float32, which put 9.7% of Beta(0.1, 0.1) at exactly 1.0.

    Against scipy's own float64 draws (two-sample KS): a continuous-CDF KS test cannot be used at
    small alpha, because the true distribution puts mass within float64 rounding of 1 (1.3% at
    alpha 0.1), which scipy's draws round to 1.0 too. The float32 draws are the same draws rounded."""
    x = sample_beta(a, b, 40000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x.dtype == torch.float64
    reference = scipy.stats.beta(a, b).rvs(40000, random_state=np.random.default_rng(0))
    assert scipy.stats.ks_2samp(x.numpy(), reference).pvalue > 1e-3
    lower = x[x < 0.5].numpy()  # the lower tail is exact in float: a one-sample KS on it
    ref = scipy.stats.beta(a, b)
    assert scipy.stats.kstest(lower, lambda t: ref.cdf(t) / ref.cdf(0.5)).pvalue > 1e-3
    rounded = sample_beta(a, b, 40000, generator=torch.Generator().manual_seed(3))
    assert rounded.dtype == torch.float32 and torch.equal(rounded, x.float())


def test_sample_beta_reproducible_and_validated():
    a = sample_beta(1.0, 1.0, 100, torch.Generator().manual_seed(1))
    b = sample_beta(1.0, 1.0, 100, torch.Generator().manual_seed(1))
    c = sample_beta(1.0, 1.0, 100, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and torch.all((a >= 0) & (a <= 1))
    with pytest.raises(ValueError, match="positive"):
        sample_beta(0.0, 1.0, 3)


def test_sample_lam_modes():
    g = torch.Generator().manual_seed(0)
    flip = torch.arange(8).flip(0)
    batch = sample_lam(1.0, 8, "batch", flip, g)
    assert batch.shape == (8,) and torch.all(batch == batch[0])
    pair = sample_lam(1.0, 8, "pair", flip, g)
    assert torch.equal(pair, pair[flip]) and pair[:4].unique().numel() == 4
    elem = sample_lam(1.0, 8, "elem", flip, g)
    assert elem.unique().numel() == 8
    with pytest.raises(ValueError, match="mode"):
        sample_lam(1.0, 8, "sample", flip, g)


def test_expand_draws_pair_uses_the_smaller_index():
    index = torch.tensor([3, 2, 1, 0, 4])
    draws = torch.arange(5.0).view(5, 1)
    assert expand_draws(draws, 5, "pair", index).flatten().tolist() == [0, 1, 1, 0, 4]
    assert expand_draws(draws[:1], 5, "batch", index).flatten().tolist() == [0] * 5


def test_simple_pairings():
    assert make_pairing(5, "flip").tolist() == [4, 3, 2, 1, 0]
    assert make_pairing(5, "roll").tolist() == [4, 0, 1, 2, 3]  # torchvision: batch.roll(1, 0)
    g = torch.Generator().manual_seed(0)
    perm = make_pairing(9, "random", g)
    assert sorted(perm.tolist()) == list(range(9))
    for b in (8, 9):
        match = make_pairing(b, "random", g, symmetric=True)
        assert torch.equal(match[match], torch.arange(b))  # an involution
        assert int((match == torch.arange(b)).sum()) == b % 2  # only the odd one out is alone
    with pytest.raises(ValueError, match="not symmetric"):
        make_pairing(4, "roll", symmetric=True)
    with pytest.raises(ValueError, match="pairing must be one of"):
        make_pairing(4, "shuffle")


def test_random_matching_is_uniform_over_partners():
    """In a random perfect matching of 6, sample 0's partner is uniform over the other 5."""
    g = torch.Generator().manual_seed(3)
    partners = np.array([int(make_pairing(6, "random", g, symmetric=True)[0]) for _ in range(3000)])
    counts = np.bincount(partners, minlength=6)
    assert counts[0] == 0
    assert scipy.stats.chisquare(counts[1:]).pvalue > 1e-3
