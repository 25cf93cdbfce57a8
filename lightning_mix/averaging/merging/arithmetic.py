"""Weighted average, task arithmetic, TIES and DARE over state dicts, one tensor at a time.

A *task vector* is ``tau_t = theta_t - theta_0``: what fine-tuning on task ``t`` changed in the base
model ``theta_0``. All methods here combine task vectors per tensor in float32:

- weighted average: ``sum_i w_i theta_i / sum_i w_i``;
- task arithmetic (Ilharco et al. 2023): ``theta_0 + lam * sum_t tau_t``;
- TIES (Yadav et al. 2023): keep the top ``density`` fraction of each task vector's entries by
  magnitude (per tensor, with ``kthvalue``: ``torch.quantile`` fails above 2^24 elements), elect
  each entry's sign as the sign of the summed trimmed values (the larger mass wins), average only
  the trimmed entries that agree with it (disjoint mean), and add ``lam`` times the result;
- DARE (Yu et al. 2024): drop each task-vector entry with probability ``p`` and rescale the
  survivors by ``1 / (1 - p)`` (unbiased in expectation), then task arithmetic or TIES' sign
  election and disjoint mean (DARE replaces TIES' magnitude trimming).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mix.averaging.merging.core import MergeError, Progress, merge_state_dicts
from lightning_mix.averaging.merging.io import StateDictLike

__all__ = [
    "weighted_average",
    "task_arithmetic",
    "ties_merge",
    "dare",
    "trim_top_k",
    "elect_and_disjoint_mean",
    "dare_drop",
]


def _check_models(models: Sequence[Any], at_least: int = 1) -> list[Any]:
    models = list(models)
    if len(models) < at_least:
        raise MergeError(f"need at least {at_least} model(s) to merge, got {len(models)}")
    return models


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"got {len(weights)} weights for {n} models; pass one weight per model")
    if sum(weights) == 0:
        raise MergeError("the weights sum to zero; pass weights with a non-zero sum")
    return weights


def _lams(lam: float | Sequence[float], n: int) -> Tensor:
    values = [float(lam)] * n if isinstance(lam, (int, float)) else [float(v) for v in lam]
    if len(values) != n:
        raise MergeError(f"got {len(values)} values of lam for {n} task vectors; pass one number or one per model")
    return torch.tensor(values)


def _task_vectors(tensors: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The base tensor and the stacked task vectors ``(T, ...)`` (a new tensor the caller owns)."""
    base = tensors[0]
    tau = torch.stack(tensors[1:])
    tau.sub_(base)
    return base, tau


def weighted_average(
    models: Sequence[StateDictLike],
    weights: Sequence[float] | None = None,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """``sum_i w_i theta_i / sum_i w_i`` per tensor (equal weights by default: a uniform soup).

    Integer buffers and filtered-out names come from the first model. ``overrides`` may set
    ``weights`` per name.
    """
    models = _check_models(models)
    w0 = _weights(weights, len(models))

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        w = _weights(p["weights"], len(ts))
        total = sum(w)
        out = torch.zeros_like(ts[0])
        for wi, t in zip(w, ts):
            out.add_(t, alpha=wi / total)
        return out

    return merge_state_dicts(
        models, combine, {"weights": w0}, include=include, exclude=exclude, overrides=overrides,
        dtype=dtype, device=device, progress=progress,
    )


def task_arithmetic(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    lam: float | Sequence[float] = 0.3,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """``theta_0 + lam * sum_t (theta_t - theta_0)`` per tensor (Ilharco et al. 2023; lam 0.3-0.4).

    ``lam`` is one scale or one per model; ``overrides={"head.*": {"lam": 0.0}}`` keeps the base
    head, for example.
    """
    models = _check_models(models)

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        base_t, tau = _task_vectors(ts)
        lams = _lams(p["lam"], tau.shape[0]).to(tau.device)
        return base_t + torch.tensordot(lams, tau, dims=1)

    return merge_state_dicts(
        [base, *models], combine, {"lam": lam}, include=include, exclude=exclude, overrides=overrides,
        dtype=dtype, device=device, progress=progress, labels=["base", *[f"model {i}" for i in range(len(models))]],
    )


def _trim_(tau: Tensor, density: float) -> Tensor:
    """In-place :func:`trim_top_k` (``tau`` is overwritten and returned).

    One task at a time, so the temporaries of ``kthvalue`` (a copy of its input and int64
    indices) cover one task vector, not all of them.
    """
    if not 0.0 < density:
        raise MergeError(f"density must be in (0, 1], got {density}")
    flat = tau.reshape(tau.shape[0], -1)
    n = flat.shape[1]
    k = min(n, max(1, math.ceil(density * n)))
    if k >= n:
        return tau
    for row in flat:
        threshold = row.abs().kthvalue(n - k + 1).values
        row.masked_fill_(row.abs() < threshold, 0.0)
    return tau


def _elect_mean_(tau: Tensor) -> Tensor:
    """In-place :func:`elect_and_disjoint_mean` (``tau`` is overwritten)."""
    elected = tau.sum(dim=0)
    agree = torch.where(elected > 0, tau > 0, tau < 0)
    agree &= elected != 0
    count = agree.sum(dim=0, dtype=tau.dtype).clamp_min_(1)
    return tau.masked_fill_(~agree, 0.0).sum(dim=0).div_(count)


def trim_top_k(tau: Tensor, density: float) -> Tensor:
    """Zero all but the ``ceil(density * n)`` largest-magnitude entries of each row of ``tau`` (T, ...).

    The threshold is the k-th largest magnitude found with ``kthvalue`` (entries tied with it are
    kept too); ``density >= 1`` keeps everything.
    """
    return _trim_(tau.clone(), density)


def elect_and_disjoint_mean(tau: Tensor) -> Tensor:
    """TIES' sign election by mass and disjoint mean over the rows of ``tau`` (T, ...).

    The elected sign of an entry is the sign of the sum of its values over tasks; the result is the
    mean of the values that are non-zero and agree with it (zero where none do).
    """
    return _elect_mean_(tau.clone())


def ties_merge(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    density: float = 0.2,
    lam: float = 1.0,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, per tensor.

    Args:
        density: fraction of each task vector's entries kept (top magnitudes, per tensor); 0.2 is
            the authors' default.
        lam: scale of the merged task vector added to the base (authors: 1, swept 0.8-2.5).
    """
    models = _check_models(models)

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        base_t, tau = _task_vectors(ts)
        merged = _elect_mean_(_trim_(tau, float(p["density"])))
        return merged.mul_(float(p["lam"])).add_(base_t)

    return merge_state_dicts(
        [base, *models], combine, {"density": density, "lam": lam}, include=include, exclude=exclude,
        overrides=overrides, dtype=dtype, device=device, progress=progress,
        labels=["base", *[f"model {i}" for i in range(len(models))]],
    )


def dare_drop(tau: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Drop each entry with probability ``p`` and rescale the rest by ``1 / (1 - p)`` (unbiased)."""
    if not 0.0 <= p < 1.0:
        raise MergeError(f"DARE drop probability p must be in [0, 1), got {p}")
    if p == 0.0:
        return tau.clone()
    keep = torch.rand(tau.shape, generator=generator, device=tau.device) >= p
    return torch.where(keep, tau / (1.0 - p), torch.zeros((), dtype=tau.dtype, device=tau.device))


def dare(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    p: float = 0.5,
    lam: float | Sequence[float] = 1.0,
    merge: str = "task_arithmetic",
    seed: int = 0,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """DARE (Yu et al. 2024): drop-and-rescale each task vector, then merge.

    Args:
        p: drop probability (0.5-0.9 in the paper); survivors are scaled by ``1 / (1 - p)``.
        lam: scale of the merged task vector (one number, or one per model with
            ``merge="task_arithmetic"``).
        merge: ``"task_arithmetic"`` (sum of the sparsified task vectors) or ``"ties"`` (TIES'
            sign election and disjoint mean on them, no magnitude trimming).
        seed: seeds the ``torch.Generator`` that draws the masks, tensor after tensor in order,
            so the same call gives the same result.
    """
    models = _check_models(models)
    if merge not in ("task_arithmetic", "ties"):
        raise MergeError(f"unknown DARE merge {merge!r}; use 'task_arithmetic' or 'ties'")
    generators: dict[str, torch.Generator] = {}

    def combine(name: str, ts: list[Tensor], prm: dict[str, Any]) -> Tensor:
        device_key = str(ts[0].device)
        if device_key not in generators:
            generators[device_key] = torch.Generator(device=ts[0].device).manual_seed(int(prm["seed"]))
        base_t, tau = _task_vectors(ts)
        tau = dare_drop(tau, float(prm["p"]), generators[device_key])
        if prm["merge"] == "ties":
            return _elect_mean_(tau).mul_(float(prm["lam"])).add_(base_t)
        lams = _lams(prm["lam"], tau.shape[0]).to(tau.device)
        return base_t + torch.tensordot(lams, tau, dims=1)

    return merge_state_dicts(
        [base, *models], combine, {"p": p, "lam": lam, "merge": merge, "seed": seed}, include=include,
        exclude=exclude, overrides=overrides, dtype=dtype, device=device, progress=progress,
        labels=["base", *[f"model {i}" for i in range(len(models))]],
    )
