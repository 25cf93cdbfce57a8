"""PCB-merging (Du et al. 2024, "Parameter Competition Balancing for Model Merging"), per tensor.

Every entry of every task vector gets a score that balances two competitions:

- intra-balancing, how important the entry is within its own task:
  ``exp(T * minmax(|tau_t|)^2)`` (``minmax`` rescales the tensor's magnitudes to [0, 1], ``T`` the
  number of tasks, so large entries grow faster the more tasks compete);
- inter-balancing, how well it agrees with the other tasks: ``tanh(tau_t * sum_j tau_j)``
  (negative where the entry fights the consensus).

The score is their product. Each task keeps the top ``keep_ratio`` of its entries by score; the kept
scores, min-max rescaled to (0, 1], weight the task vectors:
``merged = sum_t s_t tau_t / sum_t s_t`` and ``theta = theta_0 + lam * merged``. The authors score
the flattened model; here each tensor is scored on its own, which keeps memory per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mix.averaging.merging.core import MergeError, Progress, merge_state_dicts
from lightning_mix.averaging.merging.io import StateDictLike

__all__ = ["pcb_scores", "pcb_weights", "pcb_merge"]


def _minmax(x: Tensor) -> Tensor:
    low = x.min(dim=1, keepdim=True).values
    high = x.max(dim=1, keepdim=True).values
    return (x - low) / (high - low).clamp_min(torch.finfo(x.dtype).tiny)


def pcb_scores(tau: Tensor) -> Tensor:
    """Balanced scores ``exp(T * minmax(|tau_t|)^2) * tanh(tau_t * sum_j tau_j)`` for task vectors (T, ...)."""
    flat = tau.reshape(tau.shape[0], -1)
    intra = torch.exp(tau.shape[0] * _minmax(flat.abs()) ** 2)
    inter = torch.tanh(flat * flat.sum(dim=0, keepdim=True))
    return (intra * inter).reshape(tau.shape)


def pcb_weights(tau: Tensor, keep_ratio: float = 0.1) -> Tensor:
    """Per-entry weights of each task vector: the top ``keep_ratio`` scores rescaled to (0, 1], others 0."""
    if not 0.0 < keep_ratio <= 1.0:
        raise MergeError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    scores = pcb_scores(tau).reshape(tau.shape[0], -1)
    n = scores.shape[1]
    k = min(n, max(1, math.ceil(keep_ratio * n)))
    threshold = scores.kthvalue(n - k + 1, dim=1, keepdim=True).values
    clamped = torch.maximum(scores, threshold)
    low = threshold
    high = clamped.max(dim=1, keepdim=True).values
    # entries at the threshold become 0; a row whose kept scores are all equal keeps them at weight 1
    flat_row = high <= low
    weights = torch.where(flat_row, (scores >= threshold).to(scores.dtype), (clamped - low) / (high - low).clamp_min(torch.finfo(scores.dtype).tiny))
    return weights.reshape(tau.shape)


def pcb_merge(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    keep_ratio: float = 0.1,
    lam: float = 1.0,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """PCB-merging per tensor: ``theta_0 + lam * sum_t w_t tau_t / sum_t w_t`` with :func:`pcb_weights`.

    Args:
        keep_ratio: fraction of each task vector's entries kept by score (0.1).
        lam: scale of the merged task vector (1.0; the authors tune it on validation data).
    """
    models = list(models)
    if not models:
        raise MergeError("need at least 1 fine-tuned model to merge")

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        base_t = ts[0]
        tau = torch.stack([t - base_t for t in ts[1:]])
        w = pcb_weights(tau, float(p["keep_ratio"]))
        merged = (w * tau).sum(dim=0) / w.sum(dim=0).clamp_min(1e-12)
        return base_t + float(p["lam"]) * merged

    return merge_state_dicts(
        [base, *models], combine, {"keep_ratio": keep_ratio, "lam": lam}, include=include, exclude=exclude,
        overrides=overrides, dtype=dtype, device=device, progress=progress,
        labels=["base", *[f"model {i}" for i in range(len(models))]],
    )
