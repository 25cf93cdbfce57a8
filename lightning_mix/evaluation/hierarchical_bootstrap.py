"""Two-level (hierarchical) bootstrap over training seeds and test rows.

A study that trains each method with S seeds and tests every run on the same n rows has two
sources of variation: the test sample and the training run. Resampling the rows alone (as
:func:`~lightning_mix.evaluation.bootstrap_ci` does on seed-averaged predictions) treats the S
trained models as fixed; the two-level bootstrap also treats them as a sample of the runs the
method could have produced. Each resample ``b`` draws ``S`` seed indices with replacement and ``n``
row indices with replacement, and its replicate is the mean, over the drawn seeds, of the statistic
on the drawn rows of that seed's predictions (the rows are the same for every seed, and for both
models of a paired comparison). This is the "resample at every level" bootstrap for nested data
(Davison and Hinkley, *Bootstrap Methods and their Application*, 1997, section 3.8; Field and
Welsh 2007); it includes the seed-to-seed variance once and the row variance at its full size.

Vectorised: per chunk of resamples the row indices are one ``(chunk, n)`` tensor, the statistic is
evaluated once per seed on it (``S`` batched calls), and the seed draw is one gather.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lightning_mix.evaluation.bootstrap import BootstrapResult, _check_args, _evaluate, _percentile

__all__ = ["hierarchical_bootstrap_ci", "paired_hierarchical_bootstrap"]

Statistic = Callable[..., torch.Tensor]
_SEED_STREAM_OFFSET = 0x5EED  # the seed draws use their own generator, so the row draws equal bootstrap_ci's


def _seeded_tensors(data: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    tensors = [data] if isinstance(data, torch.Tensor) else list(data)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("data must be a tensor or a sequence of tensors of shape (seeds, samples, ...).")
    if any(t.dim() < 2 for t in tensors) or len({tuple(t.shape[:2]) for t in tensors}) != 1:
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(
            f"All data tensors need the same (seeds, samples) leading dimensions, got shapes {shapes}; expand a "
            "tensor shared by every seed (e.g. the labels) with labels.expand(S, -1)."
        )
    if tensors[0].shape[1] < 2:
        raise ValueError(f"Need at least 2 test samples, got {tensors[0].shape[1]}.")
    return tensors


def _per_seed_statistics(statistic: Statistic | Sequence[Statistic], seeds: int) -> list[Statistic]:
    if callable(statistic):
        return [statistic] * seeds
    statistics = list(statistic)
    if len(statistics) != seeds or not all(callable(s) for s in statistics):
        raise ValueError(f"statistic must be a callable or a sequence of {seeds} callables (one per seed).")
    return statistics


def _seed_values(statistics, tensors, index: torch.Tensor, vectorized: bool) -> torch.Tensor:
    """(chunk, S): each seed's statistic on the rows ``index`` (chunk, n) of its predictions."""
    return torch.stack(
        [_evaluate(stat, [t[s] for t in tensors], index, vectorized) for s, stat in enumerate(statistics)], dim=1
    )


def hierarchical_bootstrap_ci(
    data: torch.Tensor | Sequence[torch.Tensor],
    statistic: Statistic | Sequence[Statistic],
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    vectorized: bool = True,
    resample_seeds: bool = True,
    max_chunk_elements: int = 2**24,
) -> BootstrapResult:
    """Percentile interval of the seed-mean of ``statistic``, resampling seeds and test rows.

    Args:
        data: a tensor, or tensors resampled together, of shape ``(S, n, ...)``: seed, test row.
            A tensor shared by every seed (labels) is passed expanded, ``labels.expand(S, -1)``.
        statistic: as in :func:`~lightning_mix.evaluation.bootstrap_ci`, applied to one seed's
            data: vectorised, ``(chunk, n, ...)`` in and ``(chunk,)`` out; or one call per
            resample with ``vectorized=False``. A sequence of ``S`` callables gives each seed its
            own (for a per-seed setting such as a bandwidth chosen on that seed's full data).
        n_resamples: number of resamples B.
        confidence_level: two-sided coverage of the percentile interval.
        seed: seeds the row draws (the same stream as ``bootstrap_ci(seed=seed)``) and, through
            a second generator, the seed draws.
        vectorized: see ``statistic``.
        resample_seeds: ``False`` keeps the S seeds fixed (every replicate averages all of them):
            the row bootstrap of the seed-averaged statistic.
        max_chunk_elements: at most this many row indices per chunk (``S`` gathers of that size
            are evaluated one after the other).

    Returns:
        :class:`~lightning_mix.evaluation.BootstrapResult`; ``estimate`` is the mean over seeds
        of the statistic on all rows, ``method`` is ``"hierarchical"`` (or ``"percentile"``
        when ``resample_seeds=False``).
    """
    tensors = _seeded_tensors(data)
    _check_args(n_resamples, confidence_level, "percentile")
    seeds, n = tensors[0].shape[:2]
    statistics = _per_seed_statistics(statistic, seeds)
    device = tensors[0].device
    full = torch.arange(n, device=device)[None]
    estimate = _seed_values(statistics, tensors, full, vectorized)[0].mean()
    rows_generator = torch.Generator(device=device).manual_seed(seed)
    seeds_generator = torch.Generator().manual_seed(seed + _SEED_STREAM_OFFSET)
    chunk = max(1, min(n_resamples, max_chunk_elements // n))
    replicates = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        rows = torch.randint(n, (size, n), generator=rows_generator, device=device)
        values = _seed_values(statistics, tensors, rows, vectorized)  # (size, S)
        if resample_seeds:
            drawn = torch.randint(seeds, (size, seeds), generator=seeds_generator)
            values = values.gather(1, drawn)
        replicates.append(values.mean(1))
    replicates = torch.cat(replicates)
    alpha = (1.0 - confidence_level) / 2.0
    low, high = _percentile(replicates, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return BootstrapResult(
        estimate=float(estimate),
        low=low,
        high=high,
        standard_error=float(replicates.std(unbiased=True)),
        confidence_level=confidence_level,
        method="hierarchical" if resample_seeds else "percentile",
        distribution=replicates,
    )


def paired_hierarchical_bootstrap(
    metric: Statistic | Sequence[Statistic],
    preds_a: torch.Tensor,
    preds_b: torch.Tensor,
    target: torch.Tensor,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    vectorized: bool = True,
    resample_seeds: bool = True,
    max_chunk_elements: int = 2**24,
    metric_b: Statistic | Sequence[Statistic] | None = None,
) -> BootstrapResult:
    """Two-level paired bootstrap of ``mean_s metric(a_s) - mean_s metric_b(b_s)``, paired by seed and row.

    ``preds_a`` and ``preds_b`` are ``(S, n, ...)`` (seed ``s`` of model A is paired with seed
    ``s`` of model B, e.g. the same ``seed_everything`` value), ``target`` is ``(n,)`` or
    ``(S, n, ...)``. Each resample draws one set of seed indices and one set of rows and applies
    them to both models. ``metric`` and ``metric_b`` follow ``statistic`` in
    :func:`hierarchical_bootstrap_ci` (``metric_b`` defaults to ``metric``). ``p_value`` is the
    two-sided bootstrap p-value ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))``, as in
    :func:`~lightning_mix.evaluation.paired_bootstrap`.
    """
    if preds_a.shape != preds_b.shape or preds_a.dim() < 2:
        raise ValueError(
            "preds_a and preds_b must have the same shape (seeds, samples, ...), "
            f"got {tuple(preds_a.shape)} and {tuple(preds_b.shape)}."
        )
    seeds = preds_a.shape[0]
    target = target.expand(seeds, *target.shape) if target.dim() == 1 else target
    scores_a = _per_seed_statistics(metric, seeds)
    scores_b = scores_a if metric_b is None else _per_seed_statistics(metric_b, seeds)

    def difference(score_a: Statistic, score_b: Statistic) -> Statistic:
        return lambda a, b, t: torch.as_tensor(score_a(a, t)) - torch.as_tensor(score_b(b, t))

    result = hierarchical_bootstrap_ci(
        (preds_a, preds_b, target),
        [difference(sa, sb) for sa, sb in zip(scores_a, scores_b)],
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        seed=seed,
        vectorized=vectorized,
        resample_seeds=resample_seeds,
        max_chunk_elements=max_chunk_elements,
    )
    d = result.distribution
    p_value = min(1.0, 2.0 * min(float((d <= 0).double().mean()), float((d >= 0).double().mean())))
    return BootstrapResult(**{**result.__dict__, "p_value": p_value})
