"""Class indices to dense targets, and the target half of the mixing contract."""

from __future__ import annotations

import torch

__all__ = ["dense_targets", "mix_targets"]


def dense_targets(
    labels: torch.Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn class indices (B,) into dense targets (B, C) with optional label smoothing.

    Each row puts ``on = 1 - s + s / C`` on the true class and ``off = s / C`` elsewhere, so rows
    sum to one (the convention of timm and of ``F.cross_entropy(label_smoothing=s)``).

    Raises:
        ValueError: when a label is outside ``[0, num_classes)`` or ``labels`` is not integer.
    """
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"dense_targets expects integer class indices, got dtype {labels.dtype}; "
            "pass dense float targets straight to the mixer instead."
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}.")
    labels = labels.long()
    if labels.numel() > 0:
        in_range = (labels.min() >= 0) & (labels.max() < num_classes)
        if labels.device.type == "cpu":
            if not bool(in_range):
                low, high = int(labels.min()), int(labels.max())
                bad = low if low < 0 else high
                raise ValueError(
                    f"label {bad} is out of range for num_classes={num_classes}; "
                    "labels must lie in [0, num_classes). Check num_classes or the data's labels."
                )
        else:  # no host sync on accelerators: the check fails asynchronously on the device
            # private: torch has no public device-side assertion that avoids a host sync
            torch._assert_async(in_range, f"a label is out of range for num_classes={num_classes}")
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off
    out = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
    out.scatter_(1, labels.view(-1, 1), on)
    return out


def mix_targets(targets: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam[i] * t[i] + (1 - lam[i]) * t[index[i]]`` for targets of any trailing shape.

    Computed as ``t[index] + lam * (t - t[index])`` in the targets' dtype; ``lam`` is broadcast
    over the trailing dimensions.
    """
    if not targets.is_floating_point():
        raise ValueError(
            f"targets must be dense floating-point tensors to be mixed, got dtype {targets.dtype}; "
            "turn class indices into dense targets first (lightning_mix.mixing.dense_targets)."
        )
    weight = lam.to(targets.dtype).view(-1, *([1] * (targets.dim() - 1)))
    partner = targets.index_select(0, index)
    return torch.lerp(partner, targets, weight)
