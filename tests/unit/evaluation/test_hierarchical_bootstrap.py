"""Two-level bootstrap over seeds and rows: a direct loop, its closed-form variance, and its reductions."""

import numpy as np
import pytest
import torch

from lightning_mix.evaluation import (
    bootstrap_ci,
    hierarchical_bootstrap_ci,
    paired_bootstrap,
    paired_hierarchical_bootstrap,
)


def _values(seeds=5, n=200, seed=0):
    """Per-row losses whose seed means differ clearly (a seed effect) on top of row noise."""
    g = torch.Generator().manual_seed(seed)
    seed_effect = torch.randn(seeds, 1, generator=g, dtype=torch.float64) * 0.3
    return seed_effect + torch.rand(seeds, n, generator=g, dtype=torch.float64).pow(2)


def _loop_replicates(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The two-level bootstrap written out: draw S seeds and n rows, average the drawn seeds' row means."""
    seeds, n = x.shape
    out = np.empty(n_resamples)
    for b in range(n_resamples):
        drawn_seeds = rng.integers(0, seeds, size=seeds)
        rows = rng.integers(0, n, size=n)
        out[b] = np.mean([x[s][rows].mean() for s in drawn_seeds])
    return out


def test_matches_a_direct_loop_and_the_closed_form_variance():
    x = _values()
    ours = hierarchical_bootstrap_ci(x, lambda v: v.mean(1), n_resamples=8000, seed=1)
    loop = _loop_replicates(x.numpy(), 8000, np.random.default_rng(2))
    assert ours.estimate == pytest.approx(float(x.mean()))
    assert ours.method == "hierarchical"
    spread = float(ours.high - ours.low)
    assert ours.low == pytest.approx(np.quantile(loop, 0.025), abs=0.05 * spread)
    assert ours.high == pytest.approx(np.quantile(loop, 0.975), abs=0.05 * spread)
    # Var = var_s(mu)/S + (1/n) E_seeds[var_rows(z)], z the drawn-seed mean per row (derived in closed form)
    seeds, n = x.shape
    mu, row_mean = x.mean(1), x.mean(0)
    expected_row_part = (
        row_mean.pow(2).mean() - x.mean() ** 2 + (x.var(0, unbiased=False).mean() - mu.var(unbiased=False)) / seeds
    ) / n
    expected = float(mu.var(unbiased=False) / seeds + expected_row_part)
    assert ours.standard_error**2 == pytest.approx(expected, rel=0.06)
    assert float(loop.var()) == pytest.approx(expected, rel=0.06)


def test_identical_seeds_reduce_to_the_row_bootstrap():
    x = _values(seeds=1)[0]
    copies = x.expand(4, -1)
    two_level = hierarchical_bootstrap_ci(copies, lambda v: v.mean(1), n_resamples=300, seed=5)
    rows_only = bootstrap_ci(x, lambda v: v.mean(1), n_resamples=300, seed=5)
    torch.testing.assert_close(two_level.distribution, rows_only.distribution, rtol=1e-12, atol=1e-12)
    assert (two_level.low, two_level.high) == pytest.approx((rows_only.low, rows_only.high), abs=1e-12)


def test_fixed_seeds_is_the_row_bootstrap_of_the_seed_average_and_narrower():
    x = _values()
    fixed = hierarchical_bootstrap_ci(x, lambda v: v.mean(1), n_resamples=2000, seed=3, resample_seeds=False)
    averaged = bootstrap_ci(x.mean(0), lambda v: v.mean(1), n_resamples=2000, seed=3)
    torch.testing.assert_close(fixed.distribution, averaged.distribution, rtol=1e-12, atol=1e-12)
    assert fixed.method == "percentile"
    both = hierarchical_bootstrap_ci(x, lambda v: v.mean(1), n_resamples=2000, seed=3)
    assert both.high - both.low > 2 * (fixed.high - fixed.low)  # the seed effect dominates here


def test_one_call_per_resample_equals_the_vectorised_form():
    x = _values(seeds=3, n=40)
    vec = hierarchical_bootstrap_ci(x, lambda v: v.mean(1), n_resamples=50, seed=0)
    one = hierarchical_bootstrap_ci(x, lambda v: v.mean(), n_resamples=50, seed=0, vectorized=False)
    torch.testing.assert_close(vec.distribution, one.distribution)


def test_paired_pairs_by_seed_and_row():
    a, b = _values(seed=0), _values(seed=1)
    labels = torch.zeros(a.shape[1])

    def mean(v, t):
        return v.mean(1)

    paired = paired_hierarchical_bootstrap(mean, a, b, labels, n_resamples=500, seed=4)
    of_difference = hierarchical_bootstrap_ci(a - b, lambda v: v.mean(1), n_resamples=500, seed=4)
    torch.testing.assert_close(paired.distribution, of_difference.distribution, rtol=1e-10, atol=1e-12)
    assert paired.estimate == pytest.approx(float(a.mean() - b.mean()))
    d = paired.distribution
    assert paired.p_value == pytest.approx(
        min(1.0, 2 * min(float((d <= 0).double().mean()), float((d >= 0).double().mean())))
    )
    # with one seed it is the row-paired bootstrap
    single = paired_hierarchical_bootstrap(mean, a[:1], b[:1], labels, n_resamples=200, seed=2)
    rows = paired_bootstrap(mean, a[0], b[0], labels, n_resamples=200, seed=2)
    torch.testing.assert_close(single.distribution, rows.distribution, rtol=1e-12, atol=1e-12)


def test_per_seed_statistics_and_bad_input():
    x = _values(seeds=2, n=30)
    shifted = hierarchical_bootstrap_ci(
        x, [lambda v: v.mean(1), lambda v: v.mean(1) + 1.0], n_resamples=20, resample_seeds=False
    )
    assert shifted.estimate == pytest.approx(float(x.mean()) + 0.5)
    with pytest.raises(ValueError, match="one per seed"):
        hierarchical_bootstrap_ci(x, [lambda v: v.mean(1)], n_resamples=20)
    with pytest.raises(ValueError, match=r"labels.expand\(S, -1\)"):
        hierarchical_bootstrap_ci((x, torch.zeros(30)), lambda v, t: v.mean(1), n_resamples=20)
    with pytest.raises(ValueError, match="same shape"):
        paired_hierarchical_bootstrap(lambda v, t: v.mean(1), x, x[:1], torch.zeros(30))
    with pytest.raises(ValueError, match="n_resamples"):
        hierarchical_bootstrap_ci(x, lambda v: v.mean(1), n_resamples=1)
