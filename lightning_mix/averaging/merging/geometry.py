"""SLERP and Model Stock: merges that use the angle between weights, per tensor."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mix.averaging.merging.core import MergeError, Progress, merge_state_dicts
from lightning_mix.averaging.merging.io import StateDictLike

__all__ = ["slerp", "slerp_tensor", "model_stock", "model_stock_ratio"]


def slerp_tensor(a: Tensor, b: Tensor, t: float, threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation between two tensors seen as flat vectors.

    ``sin((1-t) w) / sin(w) * a + sin(t w) / sin(w) * b`` with ``w`` the angle between them; when
    ``|cos w| > threshold`` (nearly parallel or anti-parallel, where ``sin(w)`` vanishes) or a
    tensor is zero, it falls back to linear interpolation ``(1-t) a + t b``.
    """
    a32, b32 = a.float(), b.float()
    na, nb = a32.norm(), b32.norm()
    dot = (a32.flatten() @ b32.flatten()) / (na * nb).clamp_min(torch.finfo(torch.float32).tiny)
    if bool(na == 0) or bool(nb == 0) or bool(dot.abs() > threshold):
        return torch.lerp(a32, b32, t)
    omega = torch.arccos(dot.clamp(-1.0, 1.0))
    sin_omega = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / sin_omega) * a32 + (torch.sin(t * omega) / sin_omega) * b32


def slerp(
    a: StateDictLike | Tensor,
    b: StateDictLike | Tensor,
    t: float = 0.5,
    threshold: float = 0.9995,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor] | Tensor:
    """SLERP of two models per tensor: ``t = 0`` gives ``a``, ``t = 1`` gives ``b``.

    Falls back to linear interpolation for tensors whose cosine exceeds ``threshold`` in magnitude
    (0.9995). Tensors in, tensor out; state dicts in, state dict out (integer buffers from ``a``).
    ``overrides={"*.bias": {"t": 0.3}}`` changes ``t`` per name.
    """
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape:
            raise MergeError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
        return slerp_tensor(a, b, t, threshold).to(dtype or a.dtype)

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        return slerp_tensor(ts[0], ts[1], float(p["t"]), float(p["threshold"]))

    return merge_state_dicts(
        [a, b], combine, {"t": t, "threshold": threshold}, include=include, exclude=exclude, overrides=overrides,
        dtype=dtype, device=device, progress=progress, labels=["a", "b"],
    )


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


def model_stock(
    base: StateDictLike,
    models: Sequence[StateDictLike],
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """Model Stock (Jang et al. 2024): ``theta = t * mean(theta_i) + (1 - t) * theta_0`` per tensor.

    ``t`` comes from the angle between the fine-tuned models' task vectors
    (:func:`model_stock_ratio`): the more they agree, the closer to their mean.
    """
    models = list(models)
    if len(models) < 2:
        raise MergeError(f"Model Stock needs at least 2 fine-tuned models, got {len(models)}")

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        ratio = model_stock_ratio(ts[0], ts[1:])
        mean = torch.stack(ts[1:]).mean(dim=0)
        return ratio * mean + (1 - ratio) * ts[0]

    return merge_state_dicts(
        [base, *models], combine, {}, include=include, exclude=exclude, overrides=overrides, dtype=dtype,
        device=device, progress=progress, labels=["base", *[f"model {i}" for i in range(len(models))]],
    )
