"""DARE (Yu et al. 2024): drop each task-vector entry with probability ``p``, rescale survivors, merge.

Survivors are scaled by ``1 / (1 - p)`` (unbiased in expectation); the sparse task vectors are then
summed (``merge="task_arithmetic"``) or combined with TIES' sign election and disjoint mean
(``merge="ties"``, no magnitude trimming; zero signs as TIES' default, the authors' majority rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite, fraction_in, per_model, task_vectors
from lightning_mix.merging.methods.ties import _elect_
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["DareParams", "dare", "dare_drop"]


@dataclass(frozen=True)
class DareParams:
    """Parameters of :func:`dare`."""

    p: float = param(0.5, "drop probability in [0, 1) (0.5-0.9 in the paper)")
    lam: float | tuple[float, ...] = param(
        1.0, "scale of the merged task vector (one per model with merge=task_arithmetic)"
    )
    merge: Literal["task_arithmetic", "ties"] = param("task_arithmetic", "how the sparse task vectors are combined")
    seed: int = param(0, "seed of the drop masks, drawn tensor after tensor in order")

    def __post_init__(self) -> None:
        fraction_in("p", self.p, low_open=False)
        if self.merge not in ("task_arithmetic", "ties"):
            raise MergeError(f"unknown DARE merge {self.merge!r}; use 'task_arithmetic' or 'ties'")
        if isinstance(self.lam, (int, float)):
            finite("lam", self.lam)
        elif self.merge == "ties":
            raise MergeError("DARE with merge='ties' takes one lam")

    def check(self, num_models: int) -> None:
        """Refuse a per-model ``lam`` whose length differs from the models' count."""
        per_model("lam", self.lam, num_models)


def dare_drop(tau: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Drop each entry with probability ``p`` and rescale the rest by ``1 / (1 - p)`` (unbiased)."""
    fraction_in("DARE drop probability p", p, low_open=False)
    if p == 0.0:
        return tau.clone()
    keep = torch.rand(tau.shape, generator=generator, device=tau.device) >= p
    return torch.where(keep, tau / (1.0 - p), torch.zeros((), dtype=tau.dtype, device=tau.device))


def _combine(inputs: TensorInputs, p: DareParams) -> Tensor:
    device = inputs.tensors[0].device
    generators = inputs.scratch.setdefault("generators", {})
    if str(device) not in generators:
        generators[str(device)] = torch.Generator(device=device).manual_seed(int(p.seed))
    base, tau = task_vectors(inputs.tensors)
    tau = dare_drop(tau, p.p, generators[str(device)])
    if p.merge == "ties":
        return _elect_(tau, "majority").mul_(float(p.lam)).add_(base)
    lams = torch.tensor(per_model("lam", p.lam, tau.shape[0]), device=device)
    return base + torch.tensordot(lams, tau, dims=1)


METHOD = register(
    MergeMethod(
        name="dare",
        summary="drop-and-rescale task vectors, then task arithmetic or TIES",
        reference="Yu et al. 2024, Language models are Super Mario (DARE)",
        params=DareParams,
        combine=_combine,
        needs_base=True,
    )
)


def dare(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    p: float = 0.5,
    lam: float | Sequence[float] = 1.0,
    merge: Literal["task_arithmetic", "ties"] = "task_arithmetic",
    seed: int = 0,
    options: MergeOptions | None = None,
) -> dict[str, Tensor]:
    """DARE per tensor; the same ``seed`` gives the same result."""
    lam = lam if isinstance(lam, (int, float)) else tuple(float(v) for v in lam)
    return _merge(METHOD, models, DareParams(p, lam, merge, seed), options, base=base)


_merge = merge
