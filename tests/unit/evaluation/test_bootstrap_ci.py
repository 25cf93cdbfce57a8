"""Bootstrap intervals against scipy.stats.bootstrap, and the properties they must have."""

import numpy as np
import pytest
import scipy.stats as st
import torch

from lightning_mix.evaluation import bootstrap_ci, paired_bootstrap


def _scipy_interval(data, statistic, method, n_resamples=20000, paired=False):
    res = st.bootstrap(
        data, statistic, n_resamples=n_resamples, method=method, paired=paired, vectorized=True, random_state=1
    )
    return res.confidence_interval.low, res.confidence_interval.high


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_interval_of_a_mean_matches_scipy(method):
    rng = np.random.default_rng(0)
    x = rng.exponential(size=300)  # skewed, so BCa and percentile differ
    ours = bootstrap_ci(torch.from_numpy(x), lambda v: v.mean(1), n_resamples=20000, method=method, seed=3)
    low, high = _scipy_interval((x,), lambda v, axis: v.mean(axis), "BCa" if method == "bca" else "percentile")
    width = high - low
    assert ours.estimate == pytest.approx(x.mean())
    assert ours.low == pytest.approx(low, abs=0.03 * width)
    assert ours.high == pytest.approx(high, abs=0.03 * width)
    assert ours.standard_error == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=0.05)


def test_bca_shifts_the_interval_as_scipy_does_for_a_skewed_statistic():
    rng = np.random.default_rng(1)
    x = rng.lognormal(sigma=1.0, size=120)
    pct = bootstrap_ci(torch.from_numpy(x), lambda v: v.std(1), n_resamples=20000, method="percentile", seed=0)
    bca = bootstrap_ci(torch.from_numpy(x), lambda v: v.std(1), n_resamples=20000, method="bca", seed=0)
    low, high = _scipy_interval((x,), lambda v, axis: v.std(axis, ddof=1), "BCa")
    width = high - low
    assert bca.low == pytest.approx(low, abs=0.04 * width)
    assert bca.high == pytest.approx(high, abs=0.04 * width)
    assert bca.high > pct.high  # right-skewed: BCa moves the interval up
    assert torch.equal(bca.distribution, pct.distribution)  # same seed, same replicates


def test_paired_difference_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 2, size=500)
    a = np.where(rng.random(500) < 0.85, target, 1 - target)
    b = np.where(rng.random(500) < 0.80, target, 1 - target)
    result = paired_bootstrap(
        lambda p, t: (p == t).double().mean(1),
        torch.from_numpy(a),
        torch.from_numpy(b),
        torch.from_numpy(target),
        n_resamples=20000,
        seed=0,
    )
    ca, cb = (a == target).astype(float), (b == target).astype(float)
    low, high = _scipy_interval((ca, cb), lambda u, v, axis: u.mean(axis) - v.mean(axis), "percentile", paired=True)
    width = high - low
    assert result.estimate == pytest.approx(ca.mean() - cb.mean())
    assert result.low == pytest.approx(low, abs=0.03 * width)
    assert result.high == pytest.approx(high, abs=0.03 * width)
    d = result.distribution.numpy()
    assert result.p_value == pytest.approx(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))


def test_p_value_is_small_for_a_real_difference_and_large_for_none():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 10, (2000,), generator=g)
    good = torch.where(torch.rand(2000, generator=g) < 0.95, target, (target + 1) % 10)
    bad = torch.where(torch.rand(2000, generator=g) < 0.80, target, (target + 1) % 10)

    def acc(p, t):
        return (p == t).double().mean(1)

    assert paired_bootstrap(acc, good, bad, target, seed=0).p_value < 0.01
    assert paired_bootstrap(acc, good, good, target, seed=0).p_value == 1.0


def test_vectorized_and_per_resample_statistics_give_the_same_replicates():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    vec = bootstrap_ci(x, lambda v: v.median(1).values, n_resamples=50, seed=5)
    loop = bootstrap_ci(x, lambda v: v.median(), n_resamples=50, seed=5, vectorized=False)
    assert torch.equal(vec.distribution, loop.distribution)
    assert (vec.low, vec.high) == (loop.low, loop.high)


def test_seeded_and_independent_of_the_chunk_size():
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    one = bootstrap_ci(x, lambda v: v.mean(1), n_resamples=64, seed=7)
    chunked = bootstrap_ci(x, lambda v: v.mean(1), n_resamples=64, seed=7, max_chunk_elements=300)
    other = bootstrap_ci(x, lambda v: v.mean(1), n_resamples=64, seed=8)
    assert torch.allclose(one.distribution, chunked.distribution)
    assert not torch.equal(one.distribution, other.distribution)


def test_percentile_interval_is_the_quantiles_of_the_replicates():
    x = torch.rand(50, generator=torch.Generator().manual_seed(0))
    res = bootstrap_ci(x, lambda v: v.mean(1), n_resamples=999, confidence_level=0.9, seed=0)
    low, high = np.percentile(res.distribution.numpy(), [5, 95])
    assert (res.low, res.high) == pytest.approx((low, high))


def test_grouped_jackknife_with_one_sample_per_group_is_the_full_jackknife():
    x = torch.randn(40, generator=torch.Generator().manual_seed(0)).exp()
    full = bootstrap_ci(x, lambda v: v.mean(1), n_resamples=500, method="bca", seed=0)
    grouped = bootstrap_ci(x, lambda v: v.mean(1), n_resamples=500, method="bca", seed=0, jackknife_groups=40)
    assert (grouped.low, grouped.high) == pytest.approx((full.low, full.high))


def test_bad_input_is_named():
    x = torch.rand(10)
    with pytest.raises(ValueError, match="method must be one of"):
        bootstrap_ci(x, lambda v: v.mean(1), method="basic")
    with pytest.raises(ValueError, match="same first"):
        bootstrap_ci((x, torch.rand(9)), lambda a, b: a.mean(1))
    with pytest.raises(ValueError, match="vectorized=False"):
        bootstrap_ci(x, lambda v: v.mean())
    with pytest.raises(ValueError, match="percentile"):
        bootstrap_ci(torch.ones(10), lambda v: v.mean(1), method="bca")
