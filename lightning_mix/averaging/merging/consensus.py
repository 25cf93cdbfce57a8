"""TALL masks and consensus merging (Wang et al. 2024, "Localizing Task Information for Improved
Model Merging and Compression").

For task vectors ``tau_t`` and their multi-task sum ``tau_MTL = sum_t tau_t``, task ``t``'s TALL mask
keeps the entries where the task's own vector dominates what the other tasks add:
``m_t = |tau_t| >= lam_t * |tau_MTL - tau_t|``. Consensus merging keeps only the entries active in at
least ``k`` masks (``k = 2`` drops "selfish" weights used by one task and "catastrophic" weights used
by none) and adds ``lam`` times the masked multi-task vector to the base.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mix.averaging.merging.arithmetic import elect_and_disjoint_mean, trim_top_k
from lightning_mix.averaging.merging.core import MergeError, Progress, merge_state_dicts
from lightning_mix.averaging.merging.io import StateDictLike

__all__ = ["tall_masks", "consensus_mask", "consensus_merge"]


def tall_masks(tau: Tensor, mask_lam: float | Sequence[float] = 0.4, tau_mtl: Tensor | None = None) -> Tensor:
    """Per-task masks ``|tau_t| >= lam_t |tau_MTL - tau_t|`` for task vectors ``tau`` (T, ...)."""
    if tau_mtl is None:
        tau_mtl = tau.sum(dim=0)
    lams = torch.as_tensor(mask_lam, dtype=tau.dtype, device=tau.device).reshape(-1, *([1] * (tau.dim() - 1)))
    if lams.shape[0] not in (1, tau.shape[0]):
        raise MergeError(f"got {lams.shape[0]} mask_lam values for {tau.shape[0]} tasks; pass one or one per task")
    return tau.abs() >= lams * (tau_mtl - tau).abs()


def consensus_mask(tau: Tensor, k: int = 2, mask_lam: float | Sequence[float] = 0.4, tau_mtl: Tensor | None = None) -> Tensor:
    """Entries active in at least ``k`` TALL masks."""
    return tall_masks(tau, mask_lam, tau_mtl).sum(dim=0) >= k


def consensus_merge(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    k: int = 2,
    mask_lam: float | Sequence[float] = 0.4,
    lam: float = 0.3,
    merge: str = "task_arithmetic",
    density: float = 0.2,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """Consensus merging: ``theta_0 + lam * (consensus_mask * tau_merged)``, per tensor.

    Args:
        k: minimum number of tasks whose TALL mask must keep an entry (2 in the paper).
        mask_lam: ``lam_t`` of the TALL masks (the paper tunes it in 0.2-0.6 per task on
            validation data): one number or one per model.
        lam: scale of the masked merged task vector (task arithmetic's 0.3 by default).
        merge: how the task vectors are combined before masking: ``"task_arithmetic"`` (their
            sum, which is also ``tau_MTL`` of the masks) or ``"ties"`` (TIES with ``density``;
            the masks still use the plain sum).
    """
    models = list(models)
    if len(models) < 2:
        raise MergeError(f"consensus merging needs at least 2 fine-tuned models, got {len(models)}")
    if merge not in ("task_arithmetic", "ties"):
        raise MergeError(f"unknown consensus merge {merge!r}; use 'task_arithmetic' or 'ties'")

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        base_t = ts[0]
        tau = torch.stack([t - base_t for t in ts[1:]])
        tau_mtl = tau.sum(dim=0)
        mask = consensus_mask(tau, int(p["k"]), p["mask_lam"], tau_mtl)
        merged = tau_mtl if p["merge"] == "task_arithmetic" else elect_and_disjoint_mean(trim_top_k(tau, float(p["density"])))
        return base_t + float(p["lam"]) * torch.where(mask, merged, torch.zeros((), dtype=merged.dtype, device=merged.device))

    return merge_state_dicts(
        [base, *models], combine, {"k": k, "mask_lam": mask_lam, "lam": lam, "merge": merge, "density": density},
        include=include, exclude=exclude, overrides=overrides, dtype=dtype, device=device, progress=progress,
        labels=["base", *[f"model {i}" for i in range(len(models))]],
    )
