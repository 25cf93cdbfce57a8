"""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, per tensor.

Keep the top ``density`` fraction of each task vector's entries by magnitude, elect each entry's
sign as the sign of the summed trimmed values (the larger mass wins), average only the trimmed
entries that agree with it (disjoint mean), and add ``lam`` times the result to the base.

Compared with the authors' code (prateeksr/TIES-Merging, ``src/ties_minimal.ipynb``:
``topk_values_mask``, ``resolve_sign``, ``disjoint_merge``; re-implemented in
``tests/references/ties_reference.py``):

- the authors trim and resolve zero signs over the whole flattened model; here every tensor is
  treated on its own (memory per tensor, not per model);
- ``keep="authors"`` (default) keeps ``int(density * n) + 1`` entries per tensor, as their
  ``kthvalue(n - int(density * n))`` does; ``"mergekit"`` keeps ``int(density * n)``; ``"ceil"``
  keeps ``ceil(density * n)`` computed exactly (never one more because of float rounding);
- ``zero_sign="majority"`` (default, the authors'): where the elected sum is exactly 0 the sign is
  the sign of the sum of all elected signs of the tensor; ``"positive"`` is mergekit's +1;
  ``"zero"`` keeps no entry there (the result is 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite, fraction_in, kept_count, task_vectors
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["TiesParams", "ties", "trim_top_k", "elect_and_disjoint_mean", "ties_kept_count"]

KeepRule = Literal["authors", "mergekit", "ceil"]
ZeroSign = Literal["majority", "positive", "zero"]
_KEEP_RULES = ("authors", "mergekit", "ceil")
_ZERO_SIGNS = ("majority", "positive", "zero")


def ties_kept_count(density: float, n: int, keep: str = "authors") -> int:
    """How many of ``n`` entries a task vector keeps at ``density`` under ``keep`` (between 1 and ``n``)."""
    if keep == "authors":
        k = math.floor(_exact(density) * n) + 1
    elif keep == "mergekit":
        k = math.floor(_exact(density) * n)
    elif keep == "ceil":
        k = kept_count(density, n)
    else:
        raise MergeError(f"keep must be one of {_KEEP_RULES}, got {keep!r}")
    return min(n, max(1, k))


def _exact(density: float):
    from fractions import Fraction

    return Fraction(repr(float(density)))


@dataclass(frozen=True)
class TiesParams:
    """Parameters of :func:`ties`."""

    density: float = param(0.2, "fraction of each task vector's entries kept (top magnitudes, per tensor); authors 0.2")
    lam: float = param(1.0, "scale of the merged task vector added to the base (authors: 1, swept 0.8-2.5)")
    keep: KeepRule = param("authors", "kept count: authors int(d*n)+1, mergekit int(d*n), ceil exact ceil(d*n)")
    zero_sign: ZeroSign = param(
        "majority", "sign where the elected sum is 0: majority (authors), positive (mergekit), zero"
    )

    def __post_init__(self) -> None:
        fraction_in("density", self.density)
        finite("lam", self.lam)
        if self.keep not in _KEEP_RULES:
            raise MergeError(f"keep must be one of {_KEEP_RULES}, got {self.keep!r}")
        if self.zero_sign not in _ZERO_SIGNS:
            raise MergeError(f"zero_sign must be one of {_ZERO_SIGNS}, got {self.zero_sign!r}")


def _trim_(tau: Tensor, density: float, keep: str = "authors") -> Tensor:
    """In place: zero all but the largest-magnitude entries of each row (one task at a time, to bound temporaries)."""
    flat = tau.reshape(tau.shape[0], -1)
    n = flat.shape[1]
    k = ties_kept_count(density, n, keep)
    if k >= n:
        return tau
    for row in flat:
        threshold = row.abs().kthvalue(n - k + 1).values
        row.masked_fill_(row.abs() < threshold, 0.0)
    return tau


def _elected_sign(tau: Tensor, zero_sign: str) -> Tensor:
    sign = torch.sign(tau.sum(dim=0))
    if zero_sign == "majority":
        sign = torch.where(sign == 0, torch.sign(sign.sum()), sign)
    elif zero_sign == "positive":
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return sign


def _elect_(tau: Tensor, zero_sign: str, reduce: str = "mean") -> Tensor:
    """In place: the disjoint mean (or sum) of the entries agreeing with the elected sign."""
    sign = _elected_sign(tau, zero_sign)
    if zero_sign == "zero":
        agree = torch.where(sign > 0, tau > 0, tau < 0) & (sign != 0)
    else:  # as the authors' disjoint_merge: a sign that is still 0 keeps the negative entries
        agree = torch.where(sign > 0, tau > 0, tau < 0)
    kept = tau.masked_fill_(~agree, 0.0).sum(dim=0)
    if reduce == "sum":
        return kept
    return kept.div_(agree.sum(dim=0, dtype=tau.dtype).clamp_min_(1))


def trim_top_k(tau: Tensor, density: float, keep: str = "authors") -> Tensor:
    """Zero all but the :func:`ties_kept_count` largest-magnitude entries of each row of ``tau`` (T, ...).

    The threshold is the k-th largest magnitude found with ``kthvalue`` (entries tied with it are
    kept too, as the authors' ``>=`` does).
    """
    fraction_in("density", density)
    return _trim_(tau.clone(), density, keep)


def elect_and_disjoint_mean(tau: Tensor, zero_sign: str = "majority") -> Tensor:
    """TIES' sign election by mass and disjoint mean over the rows of ``tau`` (T, ...)."""
    return _elect_(tau.clone(), zero_sign)


def _combine(inputs: TensorInputs, p: TiesParams) -> Tensor:
    base, tau = task_vectors(inputs.tensors)
    merged = _elect_(_trim_(tau, p.density, p.keep), p.zero_sign)
    return merged.mul_(p.lam).add_(base)


METHOD = register(
    MergeMethod(
        name="ties",
        summary="trim, elect sign, disjoint mean of task vectors",
        reference="Yadav et al. 2023, TIES-Merging; prateeksr/TIES-Merging",
        params=TiesParams,
        combine=_combine,
        needs_base=True,
    )
)


def ties(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    density: float = 0.2,
    lam: float = 1.0,
    keep: KeepRule = "authors",
    zero_sign: ZeroSign = "majority",
    options: MergeOptions | None = None,
) -> dict[str, Tensor]:
    """TIES-merging per tensor (see the module docstring for the rules and the departures)."""
    return merge(METHOD, models, TiesParams(density, lam, keep, zero_sign), options, base=base)
