"""Model Stock (Jang et al. 2024): interpolate the fine-tuned mean towards the base by their angle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["ModelStockParams", "model_stock", "model_stock_ratio"]


def model_stock_ratio(base: Tensor, finetuned: Sequence[Tensor]) -> Tensor:
    """Model Stock's interpolation ratio ``t = k cos / ((k - 1) cos + 1)`` for one tensor.

    ``cos`` is the mean cosine between the task vectors ``theta_i - theta_0`` over all pairs; ``k``
    the number of fine-tuned models (at least 2). Zero task vectors count as orthogonal.
    """
    k = len(finetuned)
    if k < 2:
        raise MergeError(f"Model Stock needs at least 2 fine-tuned models, got {k}")
    tau = torch.stack([(t.float() - base.float()).flatten() for t in finetuned])
    unit = tau / tau.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    gram = unit @ unit.T
    cos = (gram.sum() - gram.diagonal().sum()) / (k * (k - 1))
    return k * cos / ((k - 1) * cos + 1)


@dataclass(frozen=True)
class ModelStockParams:
    """Model Stock has no parameters: the ratio comes from the task vectors' angles."""


def _combine(inputs: TensorInputs, p: ModelStockParams) -> Tensor:
    ts = inputs.tensors
    ratio = model_stock_ratio(ts[0], ts[1:])
    return ratio * torch.stack(ts[1:]).mean(dim=0) + (1 - ratio) * ts[0]


METHOD = register(
    MergeMethod(
        name="model_stock",
        summary="mean of the fine-tuned models pulled towards the base by their angle",
        reference="Jang et al. 2024, Model Stock",
        params=ModelStockParams,
        combine=_combine,
        needs_base=True,
        min_models=2,
    )
)


def model_stock(
    base: StateDictLike, models: Sequence[StateDictLike], options: MergeOptions | None = None
) -> dict[str, Tensor]:
    """``theta = t * mean(theta_i) + (1 - t) * theta_0`` per tensor with ``t`` from :func:`model_stock_ratio`."""
    return merge(METHOD, models, ModelStockParams(), options, base=base)
