"""TALL masks and consensus merging (Wang et al. 2024, "Localizing Task Information for Improved
Model Merging and Compression").

For task vectors ``tau_t`` and a merged multi-task vector ``tau_MTL``, task ``t``'s TALL mask keeps
the entries where the task's own vector dominates what the other tasks add:
``m_t = |tau_t| >= lam_t * |tau_MTL - tau_t|``. Consensus merging keeps only the entries active in
at least ``k`` masks (``k = 2`` drops "selfish" weights used by one task and "catastrophic" weights
used by none) and adds ``lam`` times the masked ``tau_MTL`` to the base.

With ``merge="task_arithmetic"``, ``tau_MTL`` is the sum of the task vectors. With
``merge="ties"`` and ``ties_variant="authors"`` (default) it is the TIES vector with a disjoint
*sum* (not mean), and the masks are built from it, as the authors' ``use_ties`` path
(nik-dim/tall_masks, ``src/utils/tallmask_utils.py`` with ``ties_merging(merge_func="dis-sum")``;
re-implemented in ``tests/references/consensus_reference.py``). ``ties_variant="mean"`` keeps the
earlier rule of this library: masks from the plain sum and TIES' disjoint mean as ``tau_MTL``.
TIES runs with its own defaults (authors' kept count and zero-sign rule) at ``density``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite, fraction_in, per_model, task_vectors
from lightning_mix.merging.methods.ties import _elect_, _trim_
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["ConsensusParams", "consensus", "tall_masks", "consensus_mask"]


def tall_masks(tau: Tensor, mask_lam: float | Sequence[float] = 0.4, tau_mtl: Tensor | None = None) -> Tensor:
    """Per-task masks ``|tau_t| > lam_t |tau_MTL - tau_t|`` for task vectors ``tau`` (T, ...)."""
    if tau_mtl is None:
        tau_mtl = tau.sum(dim=0)
    lams = torch.as_tensor(mask_lam, dtype=tau.dtype, device=tau.device).reshape(-1, *([1] * (tau.dim() - 1)))
    if lams.shape[0] not in (1, tau.shape[0]):
        raise MergeError(f"got {lams.shape[0]} mask_lam values for {tau.shape[0]} tasks; pass one or one per task")
    return tau.abs() > lams * (tau_mtl - tau).abs()


def consensus_mask(
    tau: Tensor, k: int = 2, mask_lam: float | Sequence[float] = 0.4, tau_mtl: Tensor | None = None
) -> Tensor:
    """Entries active in at least ``k`` TALL masks."""
    return tall_masks(tau, mask_lam, tau_mtl).sum(dim=0) >= k


@dataclass(frozen=True)
class ConsensusParams:
    """Parameters of :func:`consensus`."""

    k: int = param(2, "minimum number of tasks whose TALL mask keeps an entry (2 in the paper)")
    mask_lam: float | tuple[float, ...] = param(
        0.4, "lambda of the TALL masks: one, or one per model (tuned in 0.2-0.6)"
    )
    lam: float = param(0.3, "scale of the masked merged task vector")
    merge: Literal["task_arithmetic", "ties"] = param("task_arithmetic", "how tau_MTL is formed from the task vectors")
    density: float = param(0.2, "TIES density with merge=ties")
    ties_variant: Literal["authors", "mean"] = param(
        "authors", "merge=ties: authors (disjoint sum, masks from it) or mean"
    )

    def __post_init__(self) -> None:
        if int(self.k) != self.k or self.k < 0:
            raise MergeError(f"k must be a non-negative integer, got {self.k}")
        finite("lam", self.lam)
        fraction_in("density", self.density)
        if isinstance(self.mask_lam, (int, float)):
            finite("mask_lam", self.mask_lam)
        if self.merge not in ("task_arithmetic", "ties"):
            raise MergeError(f"unknown consensus merge {self.merge!r}; use 'task_arithmetic' or 'ties'")
        if self.ties_variant not in ("authors", "mean"):
            raise MergeError(f"ties_variant must be 'authors' or 'mean', got {self.ties_variant!r}")

    def check(self, num_models: int) -> None:
        """Refuse ``k`` above the number of models (no entry could be kept) and a wrong ``mask_lam`` count."""
        if self.k > num_models:
            raise MergeError(
                f"k={self.k} but only {num_models} models: no entry can be in {self.k} masks; use k <= {num_models}"
            )
        per_model("mask_lam", self.mask_lam, num_models)


def _combine(inputs: TensorInputs, p: ConsensusParams) -> Tensor:
    base, tau = task_vectors(inputs.tensors)
    mask_lam = p.mask_lam if isinstance(p.mask_lam, (int, float)) else list(p.mask_lam)
    if p.merge == "task_arithmetic":
        merged = tau.sum(dim=0)
        mask = consensus_mask(tau, int(p.k), mask_lam, merged)
    elif p.ties_variant == "authors":
        merged = _elect_(_trim_(tau.clone(), p.density), "majority", reduce="sum")
        mask = consensus_mask(tau, int(p.k), mask_lam, merged)
    else:
        mask = consensus_mask(tau, int(p.k), mask_lam, tau.sum(dim=0))
        merged = _elect_(_trim_(tau.clone(), p.density), "majority")
    return base + p.lam * torch.where(mask, merged, torch.zeros((), dtype=merged.dtype, device=merged.device))


METHOD = register(
    MergeMethod(
        name="consensus",
        summary="task vectors masked to the entries at least k TALL masks keep",
        reference="Wang et al. 2024, Localizing task information (TALL masks); nik-dim/tall_masks",
        params=ConsensusParams,
        combine=_combine,
        needs_base=True,
        min_models=2,
    )
)


def consensus(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    k: int = 2,
    mask_lam: float | Sequence[float] = 0.4,
    lam: float = 0.3,
    merge: Literal["task_arithmetic", "ties"] = "task_arithmetic",
    density: float = 0.2,
    ties_variant: Literal["authors", "mean"] = "authors",
    options: MergeOptions | None = None,
) -> dict[str, Tensor]:
    """Consensus merging per tensor: ``theta_0 + lam * (consensus_mask * tau_MTL)``."""
    mask_lam = mask_lam if isinstance(mask_lam, (int, float)) else tuple(float(v) for v in mask_lam)
    return _merge(METHOD, models, ConsensusParams(k, mask_lam, lam, merge, density, ties_variant), options, base=base)


_merge = merge
