"""PCB-merging (Du et al. 2024, "Parameter Competition Balancing for Model Merging"), per tensor.

Every entry of every task vector gets a score that balances two competitions:

- intra-balancing, how important the entry is within its own task:
  ``exp(T * minmax(|tau_t|)^2)`` (``minmax`` rescales the tensor's magnitudes to [0, 1], ``T`` the
  number of tasks, so large entries grow faster the more tasks compete);
- inter-balancing, how well it agrees with the other tasks: ``tanh(tau_t * sum_j tau_j)``
  (negative where the entry fights the consensus).

The score is their product. Each task keeps the top ``keep_ratio`` of its entries by score; the kept
scores, min-max rescaled to [0, 1], weight the task vectors:
``merged = sum_t s_t tau_t / sum_t s_t`` and ``theta = theta_0 + lam * merged``.

As the authors' ``PCB_merge`` (duguodong7/pcb-merging@31fa2dc, ``pcb-merging.py``; re-implemented
in ``tests/references/pcb_reference.py``), the magnitudes are first clamped to their
``clamp_ratio`` and ``1 - clamp_ratio`` order statistics (``0.0001``: sorted index
``int(n * r)`` and ``int(n * (1 - r) - 1)``, so for tensors under 10,000 entries the largest
magnitude is lowered to the second largest); the scores use the clamped magnitudes and the merge
the clamped task vectors. ``clamp_ratio=0`` turns the clamp off. Departures: each tensor is scored
on its own (the authors score the flattened model), the kept count is ``ceil(keep_ratio * n)``
computed exactly (their ``int(n * (1 - r))`` index can be off by one through float rounding), and a
row whose kept scores are all equal keeps them at weight 1 where the authors' min-max divides 0
by 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite, fraction_in, kept_count, task_vectors
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["PcbParams", "pcb", "pcb_scores", "pcb_weights", "pcb_clamp"]


def _minmax(x: Tensor) -> Tensor:
    low = x.min(dim=1, keepdim=True).values
    high = x.max(dim=1, keepdim=True).values
    return (x - low) / (high - low).clamp_min(torch.finfo(x.dtype).tiny)


def pcb_clamp(magnitudes: Tensor, ratio: float = 1e-4) -> Tensor:
    """Clamp each row of ``magnitudes`` (T, n) to its sorted entries ``int(n r)`` and ``int(n (1 - r) - 1)``."""
    n = magnitudes.shape[1]
    if ratio == 0:
        return magnitudes
    ordered = magnitudes.sort(dim=1).values
    low = ordered[:, int(n * ratio)].unsqueeze(1)
    high = ordered[:, max(0, int(n * (1 - ratio) - 1))].unsqueeze(1)
    return torch.minimum(torch.maximum(magnitudes, low), high)


def pcb_scores(tau: Tensor, clamp_ratio: float = 0.0) -> Tensor:
    """Balanced scores ``exp(T * minmax(|tau_t|)^2) * tanh(tau_t * sum_j tau_j)`` for task vectors (T, ...).

    With ``clamp_ratio`` the magnitudes of the intra term are clamped first (:func:`pcb_clamp`).
    """
    flat = tau.reshape(tau.shape[0], -1)
    magnitudes = pcb_clamp(flat.abs(), clamp_ratio)
    intra = torch.exp(tau.shape[0] * _minmax(magnitudes) ** 2)
    inter = torch.tanh(flat * flat.sum(dim=0, keepdim=True))
    return (intra * inter).reshape(tau.shape)


def pcb_weights(tau: Tensor, keep_ratio: float = 0.1, clamp_ratio: float = 0.0) -> Tensor:
    """Per-entry weights of each task vector: the top ``keep_ratio`` scores rescaled to [0, 1], others 0."""
    fraction_in("keep_ratio", keep_ratio)
    scores = pcb_scores(tau, clamp_ratio).reshape(tau.shape[0], -1)
    n = scores.shape[1]
    k = kept_count(keep_ratio, n)
    threshold = scores.kthvalue(n - k + 1, dim=1, keepdim=True).values
    clamped = torch.maximum(scores, threshold)
    high = clamped.max(dim=1, keepdim=True).values
    flat_row = high <= threshold  # a row whose kept scores are all equal keeps them at weight 1
    scaled = (clamped - threshold) / (high - threshold).clamp_min(torch.finfo(scores.dtype).tiny)
    weights = torch.where(flat_row, (scores >= threshold).to(scores.dtype), scaled)
    return weights.reshape(tau.shape)


@dataclass(frozen=True)
class PcbParams:
    """Parameters of :func:`pcb`."""

    keep_ratio: float = param(0.1, "fraction of each task vector's entries kept by score")
    lam: float = param(1.0, "scale of the merged task vector (the authors tune it on validation data)")
    clamp_ratio: float = param(1e-4, "order statistics |tau| is clamped to before scoring (authors 0.0001; 0: off)")

    def __post_init__(self) -> None:
        fraction_in("keep_ratio", self.keep_ratio)
        finite("lam", self.lam)
        if not 0.0 <= finite("clamp_ratio", self.clamp_ratio) < 0.5:
            raise MergeError(f"clamp_ratio must be in [0, 0.5), got {self.clamp_ratio}")


def _combine(inputs: TensorInputs, p: PcbParams) -> Tensor:
    base, tau = task_vectors(inputs.tensors)
    flat = tau.reshape(tau.shape[0], -1)
    clamped = (torch.sign(flat) * pcb_clamp(flat.abs(), p.clamp_ratio)).reshape(tau.shape)
    w = pcb_weights(tau, p.keep_ratio, p.clamp_ratio)
    merged = (w * clamped).sum(dim=0) / w.sum(dim=0).clamp_min(1e-12)
    return base + p.lam * merged


METHOD = register(
    MergeMethod(
        name="pcb",
        summary="task vectors weighted by intra- and inter-task competition scores",
        reference="Du et al. 2024, PCB-merging; duguodong7/pcb-merging@31fa2dc",
        params=PcbParams,
        combine=_combine,
        needs_base=True,
    )
)


def pcb(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    keep_ratio: float = 0.1,
    lam: float = 1.0,
    clamp_ratio: float = 1e-4,
    options: MergeOptions | None = None,
) -> dict[str, Tensor]:
    """PCB-merging per tensor: ``theta_0 + lam * sum_t w_t tau_t / sum_t w_t`` with :func:`pcb_weights`."""
    return merge(METHOD, models, PcbParams(keep_ratio, lam, clamp_ratio), options, base=base)
