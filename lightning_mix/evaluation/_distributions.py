"""Tail probabilities of the distributions the tests need (normal, chi-squared, binomial, t, F).

Computed with torch's special functions and a continued fraction for the regularised incomplete
beta function (Numerical Recipes, 3rd ed., section 6.4), all in float64, so the evaluation layer
needs neither scipy nor statsmodels.
"""

from __future__ import annotations

import math

import torch

__all__ = ["binom_cdf", "chi2_sf", "f_sf", "normal_cdf", "normal_ppf", "regularized_incomplete_beta", "t_sf"]


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF."""
    return torch.special.ndtr(x.double())


def normal_ppf(q: torch.Tensor) -> torch.Tensor:
    """Standard normal quantile function."""
    return torch.special.ndtri(q.double())


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-squared variable with ``df`` degrees of freedom."""
    if x <= 0:
        return 1.0
    return float(
        torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), torch.tensor(x / 2.0, dtype=torch.float64))
    )


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    i = torch.arange(k + 1, dtype=torch.float64)
    log_pmf = (
        math.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
    )
    return float(min(1.0, torch.logsumexp(log_pmf, 0).exp()))


def _beta_continued_fraction(a: float, b: float, x: float, max_iter: int = 500, eps: float = 1e-15) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of a Beta(a, b) variable at ``x``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def f_sf(f: float, df1: float, df2: float) -> float:
    """P(F >= f) for the F distribution with (``df1``, ``df2``) degrees of freedom."""
    if f <= 0:
        return 1.0
    return regularized_incomplete_beta(df2 / 2.0, df1 / 2.0, df2 / (df2 + df1 * f))
