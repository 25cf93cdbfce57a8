"""Calibration losses (torch only): focal, FLSD-53, label smoothing, MbLS, MDCA, DCA, MMCE, Brier.

Every loss takes ``(logits (B, C), targets)`` where ``targets`` is (B,) class indices or dense
(B, C) class weights (one-hot, label-smoothed or mixed targets, rows summing to one), so it
composes with the mixing callbacks. Where a term needs a hard label (DCA's and MMCE's
correctness), a dense target gives the *expected* correctness ``t[argmax p]``, which equals the
indicator for one-hot targets. All losses compute in float32 whatever the logits' dtype.

Each loss is a function (``focal_loss``...) and a small ``nn.Module`` (``FocalLoss``...) that
stores the hyper-parameters, so a model can take it from YAML.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.losses._reduction import reduce_loss

__all__ = [
    "BrierLoss",
    "DCALoss",
    "FLSD53Loss",
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "MDCALoss",
    "MMCELoss",
    "MbLSLoss",
    "brier_loss",
    "dca_loss",
    "flsd53_loss",
    "focal_loss",
    "label_smoothing_cross_entropy",
    "mbls_loss",
    "mdca_loss",
    "mmce_loss",
]


def _dense(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targets as dense float32 (B, C): class indices become one-hot rows; dense rows are checked."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}.")
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"dense targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}; "
                "pass class indices (B,) or one row of class weights per sample."
            )
        return targets.float()
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"class-index targets must be (B,) = ({logits.shape[0]},), got shape {tuple(targets.shape)}.")
    return F.one_hot(targets.long(), logits.shape[1]).float()


def _soft_ce(log_p: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    return -(dense * log_p).sum(-1)


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}.")


# --------------------------------------------------------------------------------------------
# focal family
# --------------------------------------------------------------------------------------------


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 3.0, reduction: str = "mean"
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017; for calibration Mukhoti et al. 2020): ``-sum_c t_c (1 - p_c)^gamma log p_c``.

    With a one-hot target this is ``-(1 - p_y)^gamma log p_y``; gamma = 0 is cross-entropy.
    gamma = 3 is the calibration default of Mukhoti et al.
    """
    _check_non_negative("gamma", gamma)
    dense = _dense(logits, targets)
    log_p = logits.float().log_softmax(-1)
    weight = (1 - log_p.exp()).clamp_min(0).pow(gamma)
    return reduce_loss(-(dense * weight * log_p).sum(-1), reduction)


def flsd53_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """FLSD-53 (Mukhoti et al. 2020): focal loss with gamma = 5 where p < 0.2 and gamma = 3 otherwise.

    The gamma is chosen per (sample, class) term from that class's probability, so a one-hot target
    gives the paper's per-sample ``gamma(p_y)`` and a dense target weights every class's term with
    its own gamma. Vectorised: no loop over samples.
    """
    dense = _dense(logits, targets)
    log_p = logits.float().log_softmax(-1)
    p = log_p.exp()
    gamma = torch.where(p < 0.2, torch.full_like(p, 5.0), torch.full_like(p, 3.0))
    weight = (1 - p).clamp_min(0).pow(gamma)
    return reduce_loss(-(dense * weight * log_p).sum(-1), reduction)


# --------------------------------------------------------------------------------------------
# label smoothing and margins
# --------------------------------------------------------------------------------------------


def label_smoothing_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy against ``(1 - s) t + s / C`` (Szegedy et al. 2016); dense targets are smoothed too.

    Equals ``F.cross_entropy(logits, labels, label_smoothing=s)`` for class indices.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}.")
    dense = _dense(logits, targets)
    dense = dense * (1 - smoothing) + smoothing / logits.shape[1]
    return reduce_loss(_soft_ce(logits.float().log_softmax(-1), dense), reduction)


def mbls_loss(
    logits: torch.Tensor, targets: torch.Tensor, margin: float = 10.0, alpha: float = 0.1, reduction: str = "mean"
) -> torch.Tensor:
    """Margin-based label smoothing (Liu et al. 2022): ``CE + alpha * sum_c relu(max_j z_j - z_c - margin)``.

    The penalty only touches logit distances larger than ``margin`` and needs no target, so dense
    targets work (their cross-entropy). Defaults from the paper: margin 10, alpha 0.1.
    """
    _check_non_negative("alpha", alpha)
    _check_non_negative("margin", margin)
    dense = _dense(logits, targets)
    z = logits.float()
    ce = _soft_ce(z.log_softmax(-1), dense)
    distance = z.amax(-1, keepdim=True) - z
    return reduce_loss(ce + alpha * (distance - margin).clamp_min(0).sum(-1), reduction)


# --------------------------------------------------------------------------------------------
# batch-level calibration penalties
# --------------------------------------------------------------------------------------------


def mdca_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus MDCA (Hebbalaguppe et al. 2022), ``beta * mean_c |mean_i p_ic - mean_i t_ic|``.

    The penalty is a batch statistic (so there is no per-sample reduction); dense targets enter
    it as class frequencies. The paper adds MDCA to NLL or focal loss with beta = 1.
    """
    _check_non_negative("beta", beta)
    dense = _dense(logits, targets)
    log_p = logits.float().log_softmax(-1)
    penalty = (log_p.exp().mean(0) - dense.mean(0)).abs().mean()
    return _soft_ce(log_p, dense).mean() + beta * penalty


def _expected_correct(p: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    conf, pred = p.max(-1)
    return conf, dense.gather(1, pred.unsqueeze(1)).squeeze(1)


def dca_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus DCA (Liang et al. 2020), ``beta * |mean_i conf_i - mean_i correct_i|``.

    conf is the top-label probability (differentiable), correct the 0/1 correctness of the
    prediction (for dense targets, the target weight of the predicted class). A batch statistic.
    """
    _check_non_negative("beta", beta)
    dense = _dense(logits, targets)
    log_p = logits.float().log_softmax(-1)
    conf, correct = _expected_correct(log_p.exp(), dense)
    return _soft_ce(log_p, dense).mean() + beta * (conf.mean() - correct.mean()).abs()


def mmce_loss(logits: torch.Tensor, targets: torch.Tensor, lam: float = 1.0, width: float = 0.4) -> torch.Tensor:
    """Cross-entropy plus MMCE (Kumar et al. 2018) with a Laplacian kernel ``exp(-|r - r'| / width)``.

    ``MMCE^2 = (1/B^2) sum_ij (c_i - r_i)(c_j - r_j) k(r_i, r_j)`` with r the top-label confidence
    and c the correctness (the target weight of the predicted class for dense targets); the loss
    adds ``lam * sqrt(MMCE^2)``. O(B^2) memory in the batch size; width 0.4 as in the paper.
    """
    _check_non_negative("lam", lam)
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}.")
    dense = _dense(logits, targets)
    log_p = logits.float().log_softmax(-1)
    conf, correct = _expected_correct(log_p.exp(), dense)
    residual = correct - conf
    kernel = torch.exp(-(conf.unsqueeze(0) - conf.unsqueeze(1)).abs() / width)
    mmce_sq = (residual.unsqueeze(0) * residual.unsqueeze(1) * kernel).sum() / conf.numel() ** 2
    return _soft_ce(log_p, dense).mean() + lam * mmce_sq.clamp_min(1e-12).sqrt()


def brier_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Brier loss ``sum_c (p_c - t_c)^2`` per sample (Brier 1950), for dense or index targets."""
    dense = _dense(logits, targets)
    return reduce_loss((logits.float().softmax(-1) - dense).square().sum(-1), reduction)


# --------------------------------------------------------------------------------------------
# modules (hyper-parameters stored, so a model can take them from YAML)
# --------------------------------------------------------------------------------------------


class FocalLoss(nn.Module):
    """:func:`focal_loss` as a module."""

    def __init__(self, gamma: float = 3.0, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma, self.reduction = gamma, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, targets, self.gamma, self.reduction)


class FLSD53Loss(nn.Module):
    """:func:`flsd53_loss` as a module."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return flsd53_loss(logits, targets, self.reduction)


class LabelSmoothingCrossEntropy(nn.Module):
    """:func:`label_smoothing_cross_entropy` as a module."""

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.smoothing, self.reduction = smoothing, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return label_smoothing_cross_entropy(logits, targets, self.smoothing, self.reduction)


class MbLSLoss(nn.Module):
    """:func:`mbls_loss` as a module."""

    def __init__(self, margin: float = 10.0, alpha: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.margin, self.alpha, self.reduction = margin, alpha, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return mbls_loss(logits, targets, self.margin, self.alpha, self.reduction)


class MDCALoss(nn.Module):
    """:func:`mdca_loss` as a module."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return mdca_loss(logits, targets, self.beta)


class DCALoss(nn.Module):
    """:func:`dca_loss` as a module."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return dca_loss(logits, targets, self.beta)


class MMCELoss(nn.Module):
    """:func:`mmce_loss` as a module."""

    def __init__(self, lam: float = 1.0, width: float = 0.4) -> None:
        super().__init__()
        self.lam, self.width = lam, width

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return mmce_loss(logits, targets, self.lam, self.width)


class BrierLoss(nn.Module):
    """:func:`brier_loss` as a module."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return brier_loss(logits, targets, self.reduction)
