"""The ``reduction`` argument every loss here shares."""

from __future__ import annotations

import torch

__all__ = ["reduce_loss"]


def reduce_loss(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``) to per-sample losses."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
