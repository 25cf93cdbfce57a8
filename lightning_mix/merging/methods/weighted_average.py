"""Weighted average: ``sum_i w_i theta_i / sum_i w_i`` per tensor (a uniform soup with equal weights)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import per_model
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["WeightedAverageParams", "weighted_average"]


@dataclass(frozen=True)
class WeightedAverageParams:
    """Parameters of :func:`weighted_average`."""

    weights: tuple[float, ...] | None = param(None, "one weight per model (equal by default); normalised by their sum")

    def check(self, num_models: int) -> None:
        """Refuse a weight count that differs from the models', non-finite weights, or a zero sum."""
        if self.weights is not None:
            w = per_model("weights", tuple(self.weights), num_models)
            if sum(w) == 0:
                raise MergeError("the weights sum to zero; pass weights with a non-zero sum")


def _combine(inputs: TensorInputs, p: WeightedAverageParams) -> Tensor:
    ts = inputs.tensors
    w = [1.0] * len(ts) if p.weights is None else [float(v) for v in p.weights]
    total = sum(w)
    out = torch.zeros_like(ts[0])
    for wi, t in zip(w, ts):
        out.add_(t, alpha=wi / total)
    return out


METHOD = register(
    MergeMethod(
        name="weighted_average",
        summary="weighted mean of the models (equal weights: a uniform soup)",
        reference="Wortsman et al. 2022, Model soups (uniform soup)",
        params=WeightedAverageParams,
        combine=_combine,
        needs_base=False,
    )
)


def weighted_average(
    models: Sequence[StateDictLike], weights: Sequence[float] | None = None, options: MergeOptions | None = None
) -> dict[str, Tensor]:
    """``sum_i w_i theta_i / sum_i w_i`` per tensor; integer buffers and filtered-out names from the first model."""
    params = WeightedAverageParams(None if weights is None else tuple(float(w) for w in weights))
    return merge(METHOD, models, params, options)
