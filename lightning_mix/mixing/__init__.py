"""Batch mixing (torch only): pairing, lambda sampling, masks and targets.

A mixer is a callable ``mixer(inputs, targets, generator=None) -> MixedBatch``.
"""

from lightning_mix.mixing.batch import MixedBatch
from lightning_mix.mixing.targets import dense_targets, mix_targets

__all__ = ["MixedBatch", "dense_targets", "mix_targets"]
