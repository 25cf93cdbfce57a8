"""Batch mixing (torch only): pairing, lambda sampling, masks and targets.

A mixer is a callable ``mixer(inputs, targets, generator=None) -> MixedBatch``.
"""

from lightning_mix.mixing.batch import MixedBatch
from lightning_mix.mixing.cmixup_sampler import CMixupBatchSampler, EpochPermutation, PartnerMixup, label_kernel_rows
from lightning_mix.mixing.mixers import (
    BatchMixer,
    CutMix,
    FMix,
    MidpointMixup,
    Mixup,
    RandomChoice,
    ResizeMix,
    box_corners,
    box_masks,
    fmix_masks,
    fourier_maps,
    paste_boxes,
)
from lightning_mix.mixing.saliency import SaliencyMix, saliency_peaks, spectral_residual_saliency
from lightning_mix.mixing.sampling import (
    MODES,
    PAIRINGS,
    Mode,
    Pairing,
    expand_draws,
    label_kernel_probabilities,
    make_pairing,
    sample_beta,
    sample_lam,
)
from lightning_mix.mixing.sumix import (
    corrected_lam,
    semantic_distances,
    sumix_batch,
    uncertainty_loss,
    uncertainty_scores,
)
from lightning_mix.mixing.targets import dense_targets, mix_targets

__all__ = [
    "MODES",
    "PAIRINGS",
    "BatchMixer",
    "CMixupBatchSampler",
    "EpochPermutation",
    "CutMix",
    "FMix",
    "MidpointMixup",
    "MixedBatch",
    "PartnerMixup",
    "Mode",
    "Pairing",
    "Mixup",
    "RandomChoice",
    "ResizeMix",
    "SaliencyMix",
    "box_corners",
    "box_masks",
    "corrected_lam",
    "dense_targets",
    "expand_draws",
    "fmix_masks",
    "fourier_maps",
    "label_kernel_probabilities",
    "label_kernel_rows",
    "make_pairing",
    "mix_targets",
    "paste_boxes",
    "sample_beta",
    "sample_lam",
    "saliency_peaks",
    "semantic_distances",
    "spectral_residual_saliency",
    "sumix_batch",
    "uncertainty_loss",
    "uncertainty_scores",
]
