"""The mixup ranking loss as the RankMixup authors' code computes it (test-only reference).

Follows ``RankMixup_MRL.forward`` in calibrate/losses/rankmixup.py of cvlab-yonsei/RankMixup at
commit e4a37c801646eb416bc5af4cd80fd533835bf7ac (re-written minimally, not copied): the
same-class mask has shape (B,) and the logit difference (B, 1), so their product broadcasts to
(B, B) and its mean is ``mean(mask) * mean(hinge)`` rather than ``mean(mask * hinge)``.
"""

from __future__ import annotations

import torch


def authors_mrl(
    logits: torch.Tensor, mixed_logits: torch.Tensor, mixed_targets: torch.Tensor, margin: float
) -> torch.Tensor:
    """``logits``, ``mixed_logits`` (B, C); ``mixed_targets`` (B, C) the mixed one-hot targets
    (a row holding an exact 1.0 is a same-class mix, masked)."""
    mask = (mixed_targets == 1.0).sum(dim=1).reshape(1, -1)
    mask = mask.sum(dim=0) == 0.0  # (B,)
    diff = (mixed_logits.max(dim=1).values - logits.max(dim=1).values).unsqueeze(1)  # (B, 1)
    return (mask * torch.relu(diff + margin)).mean()  # (B,) * (B, 1) -> (B, B)
