"""SLERP: spherical interpolation between two models, per tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["SlerpParams", "slerp", "slerp_tensor"]


def slerp_tensor(a: Tensor, b: Tensor, t: float, threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation between two tensors seen as flat vectors.

    ``sin((1-t) w) / sin(w) * a + sin(t w) / sin(w) * b`` with ``w`` the angle between them; when
    ``|cos w| > threshold`` (nearly parallel or anti-parallel, where ``sin(w)`` vanishes) or a
    tensor is zero, it falls back to linear interpolation ``(1-t) a + t b``.
    """
    if a.shape != b.shape:
        raise MergeError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    a32, b32 = a.float(), b.float()
    na, nb = a32.norm(), b32.norm()
    dot = (a32.flatten() @ b32.flatten()) / (na * nb).clamp_min(torch.finfo(torch.float32).tiny)
    if bool(na == 0) or bool(nb == 0) or bool(dot.abs() > threshold):
        return torch.lerp(a32, b32, t)
    omega = torch.arccos(dot.clamp(-1.0, 1.0))
    sin_omega = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / sin_omega) * a32 + (torch.sin(t * omega) / sin_omega) * b32


@dataclass(frozen=True)
class SlerpParams:
    """Parameters of :func:`slerp`."""

    t: float = param(0.5, "position between the two models: 0 gives the first, 1 the second")
    threshold: float = param(0.9995, "|cos| above which it interpolates linearly (nearly parallel tensors)")

    def __post_init__(self) -> None:
        finite("t", self.t)
        finite("threshold", self.threshold)


def _combine(inputs: TensorInputs, p: SlerpParams) -> Tensor:
    return slerp_tensor(inputs.tensors[0], inputs.tensors[1], p.t, p.threshold)


METHOD = register(
    MergeMethod(
        name="slerp",
        summary="spherical interpolation between exactly two models",
        reference="Shoemake 1985; as in mergekit's slerp",
        params=SlerpParams,
        combine=_combine,
        needs_base=False,
        min_models=2,
        max_models=2,
    )
)


def slerp(
    a: StateDictLike, b: StateDictLike, t: float = 0.5, threshold: float = 0.9995, options: MergeOptions | None = None
) -> dict[str, Tensor]:
    """SLERP of two models per tensor: ``t = 0`` gives ``a``, ``t = 1`` gives ``b`` (integer buffers from ``a``).

    For two tensors, use :func:`slerp_tensor`.
    """
    return merge(METHOD, [a, b], SlerpParams(t, threshold), options)
