"""Task arithmetic (Ilharco et al. 2023): ``theta_0 + lam * sum_t (theta_t - theta_0)`` per tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite, per_model, task_vectors
from lightning_mix.merging.registry import MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["TaskArithmeticParams", "task_arithmetic"]


@dataclass(frozen=True)
class TaskArithmeticParams:
    """Parameters of :func:`task_arithmetic`."""

    lam: float | tuple[float, ...] = param(
        0.3, "scale of the summed task vectors: one, or one per model (0.3-0.4 in the paper)"
    )

    def __post_init__(self) -> None:
        if isinstance(self.lam, (int, float)):
            finite("lam", self.lam)

    def check(self, num_models: int) -> None:
        """Refuse a per-model ``lam`` whose length differs from the models' count."""
        per_model("lam", self.lam, num_models)


def _combine(inputs: TensorInputs, p: TaskArithmeticParams) -> Tensor:
    base, tau = task_vectors(inputs.tensors)
    lams = torch.tensor(per_model("lam", p.lam, tau.shape[0]), device=tau.device)
    return base + torch.tensordot(lams, tau, dims=1)


METHOD = register(
    MergeMethod(
        name="task_arithmetic",
        summary="base + lam * sum of task vectors",
        reference="Ilharco et al. 2023, Editing models with task arithmetic",
        params=TaskArithmeticParams,
        combine=_combine,
        needs_base=True,
    )
)


def task_arithmetic(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    lam: float | Sequence[float] = 0.3,
    options: MergeOptions | None = None,
) -> dict[str, Tensor]:
    """``theta_0 + lam * sum_t (theta_t - theta_0)`` per tensor; ``lam`` is one scale or one per model.

    ``MergeOptions(overrides={"head.*": {"lam": 0.0}})`` keeps the base head, for example.
    """
    lam = lam if isinstance(lam, (int, float)) else tuple(float(v) for v in lam)
    return merge(METHOD, models, TaskArithmeticParams(lam), options, base=base)
