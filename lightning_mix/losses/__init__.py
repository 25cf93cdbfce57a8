"""Losses (torch only): soft-target cross-entropy, calibration losses, mixing-aware losses."""

from lightning_mix.losses.calibration import (
    BrierLoss,
    DCALoss,
    FLSD53Loss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    MbLSLoss,
    MDCALoss,
    MMCELoss,
    brier_loss,
    dca_loss,
    flsd53_loss,
    focal_loss,
    label_smoothing_cross_entropy,
    mbls_loss,
    mdca_loss,
    mmce_loss,
)
from lightning_mix.losses.mixup_losses import decoupled_mixup_loss, mixup_ndcg_loss, mixup_ranking_loss
from lightning_mix.losses.soft_target import soft_cross_entropy

__all__ = [
    "BrierLoss",
    "DCALoss",
    "FLSD53Loss",
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "MbLSLoss",
    "MDCALoss",
    "MMCELoss",
    "brier_loss",
    "dca_loss",
    "flsd53_loss",
    "focal_loss",
    "label_smoothing_cross_entropy",
    "mbls_loss",
    "mdca_loss",
    "mmce_loss",
    "decoupled_mixup_loss",
    "mixup_ndcg_loss",
    "mixup_ranking_loss",
    "soft_cross_entropy",
]
