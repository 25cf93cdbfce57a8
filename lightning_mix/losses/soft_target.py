"""Cross-entropy against dense (soft) targets, the loss that mixed targets need."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy ``-sum_c t_c log softmax(z)_c`` for dense targets of shape (B, C).

    Integer class indices (B,) are accepted too and go to ``F.cross_entropy``, so a model's
    training step needs one loss whether or not a mixing callback made its targets dense.

    The dense case is ``F.cross_entropy`` with probability targets (``-sum_c t_c log_softmax(z)_c``
    per row, no requirement that rows sum to one), whose fused log-softmax kernels are faster
    forward+backward than a hand-written ``logsumexp(z) * sum(t) - <t, z>``. It runs in float32
    whatever the logits' dtype (bf16 logits under autocast lose too much precision in the
    log-sum-exp otherwise).

    Args:
        logits: (B, C) unnormalised scores.
        targets: (B, C) non-negative weights per class (rows usually sum to one), or (B,) indices.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if logits.dtype != torch.float32:
        logits = logits.float()
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"dense targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}; "
                "pass class indices (B,) or one row of class weights per sample."
            )
        if targets.dtype != torch.float32:
            targets = targets.float()
    return F.cross_entropy(logits, targets, reduction=reduction)
