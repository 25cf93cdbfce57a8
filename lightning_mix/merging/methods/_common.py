"""Shared parameter checks and task-vector helpers of the merge methods."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor

from lightning_mix.merging.registry import MergeError

__all__ = ["finite", "fraction_in", "per_model", "kept_count", "task_vectors"]


def finite(name: str, value: float) -> float:
    """``value`` as a float, refusing nan and inf."""
    value = float(value)
    if not math.isfinite(value):
        raise MergeError(f"{name} must be a finite number, got {value}")
    return value


def fraction_in(name: str, value: float, low_open: bool = True, high: float = 1.0) -> float:
    """Refuse a value outside ``(0, high]`` (``[0, high)`` when ``low_open`` is false)."""
    value = finite(name, value)
    ok = (0.0 < value <= high) if low_open else (0.0 <= value < high)
    if not ok:
        interval = f"(0, {high:g}]" if low_open else f"[0, {high:g})"
        raise MergeError(f"{name} must be in {interval}, got {value}")
    return value


def per_model(name: str, value: float | Sequence[float], n: int) -> list[float]:
    """One finite number, or one per model, as a list of ``n`` floats."""
    values = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(values) != n:
        raise MergeError(f"got {len(values)} values of {name} for {n} models; pass one number or one per model")
    return [finite(name, v) for v in values]


def kept_count(density: float, n: int) -> int:
    """``ceil(density * n)`` computed exactly on the decimal ``density`` (0.07 * 100 is 7, not 8).

    ``math.ceil(0.07 * 100)`` is 8 because the float product is 7.000000000000001; the decimal
    value the user wrote is used instead.
    """
    return min(n, max(1, math.ceil(Fraction(repr(float(density))) * n)))


def task_vectors(tensors: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The base tensor and the stacked task vectors ``(T, ...)`` (a new tensor the caller owns)."""
    base = tensors[0]
    tau = torch.stack(tensors[1:])
    tau.sub_(base)
    return base, tau
