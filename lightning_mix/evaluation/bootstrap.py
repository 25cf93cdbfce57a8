"""Bootstrap confidence intervals over stored predictions (percentile and BCa), and the paired bootstrap.

The resample indices are drawn as one ``(chunk, n)`` tensor per chunk of resamples from a seeded
``torch.Generator``, so the work is a few large vectorised gathers and the memory is bounded by
``max_chunk_elements`` (not by ``n_resamples * n``). Methods follow Efron and Tibshirani,
*An Introduction to the Bootstrap* (1993): the percentile interval (ch. 13) and the
bias-corrected and accelerated (BCa) interval (ch. 14.3) with the jackknife acceleration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lightning_mix.evaluation._distributions import normal_cdf, normal_ppf

__all__ = ["BootstrapResult", "bootstrap_ci", "paired_bootstrap"]

_METHODS = ("percentile", "bca")
Statistic = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap estimate: the statistic on the full data, its interval and standard error.

    ``distribution`` holds the ``n_resamples`` bootstrap replicates (float64, on the CPU).
    ``p_value`` is set by :func:`paired_bootstrap` only (two-sided, for "no difference").
    """

    estimate: float
    low: float
    high: float
    standard_error: float
    confidence_level: float
    method: str
    distribution: torch.Tensor
    p_value: float | None = None


def _as_tensors(data: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    tensors = [data] if isinstance(data, torch.Tensor) else list(data)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("data must be a tensor or a sequence of tensors (one per stored prediction array).")
    n = tensors[0].shape[0] if tensors[0].dim() else 0
    if n < 2 or any(t.dim() == 0 or t.shape[0] != n for t in tensors):
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(f"All data tensors need the same first (sample) dimension of at least 2, got shapes {shapes}.")
    return tensors


def _check_args(n_resamples: int, confidence_level: float, method: str) -> None:
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}.")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1), got {confidence_level}.")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")


def _evaluate(statistic: Statistic, tensors: list[torch.Tensor], index: torch.Tensor, vectorized: bool) -> torch.Tensor:
    """Statistic of each row of ``index`` (chunk, m): one batched call, or one call per row."""
    if vectorized:
        flat = index.reshape(-1)  # index_select on a flat index is several times faster than t[index] on CPU
        values = statistic(*[t.index_select(0, flat).reshape(*index.shape, *t.shape[1:]) for t in tensors])
        if values.shape != (index.shape[0],):
            raise ValueError(
                "A vectorized statistic must reduce the sample dimension (dim 1) and return shape "
                f"({index.shape[0]},), "
                f"got {tuple(values.shape)}. Pass vectorized=False for a statistic of one sample."
            )
        return values.detach().double().cpu()
    return torch.stack(
        [torch.as_tensor(statistic(*[t[row] for t in tensors])).detach().double().cpu() for row in index]
    )


def _replicates(statistic, tensors, n_resamples, generator, vectorized, max_chunk_elements) -> torch.Tensor:
    n = tensors[0].shape[0]
    device = tensors[0].device
    chunk = max(1, min(n_resamples, max_chunk_elements // n))
    out = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        index = torch.randint(n, (size, n), generator=generator, device=device)
        out.append(_evaluate(statistic, tensors, index, vectorized))
    return torch.cat(out)


def _jackknife(statistic, tensors, vectorized, groups, generator, max_chunk_elements) -> torch.Tensor:
    """Leave-one-out statistics (n of them), or leave-one-group-out ones when ``groups`` is given."""
    n = tensors[0].shape[0]
    device = tensors[0].device
    if groups is None:
        chunk = max(1, max_chunk_elements // (n - 1))
        positions = torch.arange(n - 1, device=device)
        out = []
        for start in range(0, n, chunk):
            left_out = torch.arange(start, min(n, start + chunk), device=device)
            index = positions + (positions >= left_out[:, None]).long()
            out.append(_evaluate(statistic, tensors, index, vectorized))
        return torch.cat(out)
    order = torch.randperm(n, generator=generator, device=device)
    out = []
    for block in torch.tensor_split(order, groups):
        keep = torch.ones(n, dtype=torch.bool, device=device)
        keep[block] = False
        out.append(_evaluate(statistic, tensors, keep.nonzero().squeeze(1)[None], vectorized))
    return torch.cat(out)


def _percentile(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return torch.quantile(values, q.clamp(0.0, 1.0).to(values.dtype))  # linear interpolation, as numpy's default


def bootstrap_ci(
    data: torch.Tensor | Sequence[torch.Tensor],
    statistic: Statistic,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
    vectorized: bool = True,
    jackknife_groups: int | None = None,
    max_chunk_elements: int = 2**24,
) -> BootstrapResult:
    """Bootstrap confidence interval of ``statistic`` over stored per-sample predictions.

    Args:
        data: a tensor, or a sequence of tensors resampled together (paired: the same rows of
            each), whose first dimension is the sample (e.g. ``(probs, targets)``).
        statistic: with ``vectorized=True``, receives the resampled tensors with a leading
            resample dimension, ``(chunk, n, ...)``, and returns shape ``(chunk,)`` (for example
            ``lambda correct: correct.float().mean(1)``); with ``vectorized=False``, receives one
            resample ``(n, ...)`` and returns a scalar (any metric, one call per resample).
        n_resamples: number of bootstrap resamples B.
        confidence_level: two-sided coverage of the interval.
        method: ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated).
        seed: seeds the ``torch.Generator`` that draws the resamples (same seed, same result).
        vectorized: see ``statistic``.
        jackknife_groups: BCa only. ``None`` computes the acceleration from all ``n``
            leave-one-out statistics (O(n^2) work, as Efron and Tibshirani and scipy do); an
            integer uses a delete-a-group jackknife over that many random groups instead, which is
            what makes BCa feasible for large ``n``.
        max_chunk_elements: at most this many resampled indices are held at once (int64, so
            ``8 * max_chunk_elements`` bytes plus the gathered data).

    Returns:
        :class:`BootstrapResult` with the statistic on the full data as ``estimate``.
    """
    tensors = _as_tensors(data)
    _check_args(n_resamples, confidence_level, method)
    if jackknife_groups is not None and not 2 <= jackknife_groups <= tensors[0].shape[0]:
        raise ValueError(f"jackknife_groups must lie in [2, n], got {jackknife_groups}.")
    n = tensors[0].shape[0]
    full = torch.arange(n, device=tensors[0].device)[None]
    estimate = _evaluate(statistic, tensors, full, vectorized)[0]
    generator = torch.Generator(device=tensors[0].device).manual_seed(seed)
    replicates = _replicates(statistic, tensors, n_resamples, generator, vectorized, max_chunk_elements)
    alpha = (1.0 - confidence_level) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    if method == "bca":
        theta_i = _jackknife(statistic, tensors, vectorized, jackknife_groups, generator, max_chunk_elements)
        q = _bca_levels(replicates, estimate, theta_i, q)
    low, high = _percentile(replicates, q).tolist()
    return BootstrapResult(
        estimate=float(estimate),
        low=low,
        high=high,
        standard_error=float(replicates.std(unbiased=True)),
        confidence_level=confidence_level,
        method=method,
        distribution=replicates,
    )


def _bca_levels(
    replicates: torch.Tensor, estimate: torch.Tensor, theta_i: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """Adjusted percentile levels of the BCa interval (Efron and Tibshirani 1993, eqs. 14.9-14.15)."""
    z0 = normal_ppf((replicates < estimate).double().mean()[None])[0]
    deviation = theta_i.mean() - theta_i
    denominator = 6.0 * deviation.pow(2).sum().pow(1.5)
    acceleration = deviation.pow(3).sum() / denominator if denominator > 0 else torch.zeros((), dtype=torch.float64)
    if not torch.isfinite(z0):
        raise ValueError(
            "BCa is undefined here: every bootstrap replicate lies on one side of the estimate (a degenerate "
            "statistic, e.g. a constant). Use method='percentile'."
        )
    z = normal_ppf(q)
    return normal_cdf(z0 + (z0 + z) / (1.0 - acceleration * (z0 + z)))


def paired_bootstrap(
    metric: Statistic,
    preds_a: torch.Tensor,
    preds_b: torch.Tensor,
    target: torch.Tensor,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
    vectorized: bool = True,
    jackknife_groups: int | None = None,
    max_chunk_elements: int = 2**24,
    metric_b: Statistic | None = None,
) -> BootstrapResult:
    """Paired bootstrap of ``metric(preds_a, target) - metric(preds_b, target)`` on one test set.

    Both models are scored on the same resampled rows, so the interval reflects the variance of
    the *difference* (usually much narrower than two separate intervals suggest). ``metric``
    follows ``statistic`` in :func:`bootstrap_ci` (vectorised: ``(chunk, n, ...)`` in,
    ``(chunk,)`` out). ``p_value`` is the two-sided bootstrap p-value for "no difference":
    ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` over the replicates, i.e. the smallest
    ``1 - confidence_level`` at which the percentile interval excludes 0. ``metric_b``, when
    given, scores ``preds_b`` instead of ``metric`` (for a metric with a per-model setting, such
    as a bandwidth chosen on each model's full predictions).
    """
    score_b = metric if metric_b is None else metric_b

    def difference(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(metric(a, t)) - torch.as_tensor(score_b(b, t))

    if preds_a.shape != preds_b.shape:
        raise ValueError(
            f"preds_a and preds_b must have the same shape, got {tuple(preds_a.shape)} and {tuple(preds_b.shape)}."
        )
    result = bootstrap_ci(
        (preds_a, preds_b, target),
        difference,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method=method,
        seed=seed,
        vectorized=vectorized,
        jackknife_groups=jackknife_groups,
        max_chunk_elements=max_chunk_elements,
    )
    d = result.distribution
    p_value = min(1.0, 2.0 * min(float((d <= 0).double().mean()), float((d >= 0).double().mean())))
    return BootstrapResult(**{**result.__dict__, "p_value": p_value})
