"""The result type every mixer returns."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MixedBatch"]


class MixedBatch(NamedTuple):
    """A mixed batch and how it was mixed.

    Attributes:
        inputs: mixed inputs, same shape, dtype and device as the inputs given to the mixer.
        targets: mixed dense targets, ``targets[i] = lam[i] * t[i] + (1 - lam[i]) * t[index[i]]``.
        index: LongTensor (B,), the partner of each sample.
        lam: float tensor (B,), the weight that sample ``i``'s own target receives, after any
            area correction (CutMix box clipping, FMix rounding, ResizeMix paste size).

    Losses that need the pair (decoupled mixup, RankMixup) read ``index`` and ``lam`` from here
    instead of re-deriving them.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor
    lam: torch.Tensor
