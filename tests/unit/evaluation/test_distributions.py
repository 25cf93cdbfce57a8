"""The evaluation layer's own tail probabilities against scipy.stats."""

import pytest
import scipy.stats as st

from lightning_mix.evaluation._distributions import binom_cdf, chi2_sf, f_sf, regularized_incomplete_beta, t_sf


@pytest.mark.parametrize("x,df", [(0.3, 1), (3.84, 1), (12.0, 3), (0.0, 2), (40.0, 9)])
def test_chi2_sf_matches_scipy(x, df):
    assert chi2_sf(x, df) == pytest.approx(st.chi2.sf(x, df), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("k,n", [(0, 5), (3, 10), (12, 40), (199, 400), (10, 10)])
def test_binom_cdf_matches_scipy(k, n):
    assert binom_cdf(k, n, 0.5) == pytest.approx(st.binom.cdf(k, n, 0.5), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("t,df", [(0.0, 5), (1.2, 5), (-2.5, 5), (6.0, 5), (2.0, 17.5)])
def test_t_sf_matches_scipy(t, df):
    assert t_sf(t, df) == pytest.approx(st.t.sf(t, df), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("f", [0.1, 1.0, 3.3, 12.0, 80.0])
def test_f_sf_matches_scipy(f):
    assert f_sf(f, 10, 5) == pytest.approx(st.f.sf(f, 10, 5), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.2), (2.5, 5.0, 0.9), (50.0, 3.0, 0.95)])
def test_incomplete_beta_matches_scipy(a, b, x):
    from scipy.special import betainc

    assert regularized_incomplete_beta(a, b, x) == pytest.approx(betainc(a, b, x), rel=1e-9, abs=1e-14)
