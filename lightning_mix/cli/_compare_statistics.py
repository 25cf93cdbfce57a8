"""compare's resampled statistics, vectorised over the resamples: binned ECE, AURC and smECE at a fixed bandwidth.

Each metric is reduced to per-row features of one seed's predictions (computed once, in the
dtype the one-sample metric uses), so a resample is a gather of rows and the statistic of a
``(chunk, n, features)`` block is a few batched tensor operations instead of ``chunk`` calls.
Every statistic equals its one-sample counterpart on each resample (tested): binned ECE is
``calibration_error(n_bins=15)``, AURC is ``aurc`` (stable sort, ties in row order), smECE is
``smooth_ece_at`` at the bandwidth chosen on the seed's full predictions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_mix.metrics import functional as CF

# the smoothing and interpolation of relplot's discretisation are not public in metrics.functional;
# they are reused here so that the batched smECE follows the one-sample one step for step
from lightning_mix.metrics.functional import _interpolate, _reflected_gaussian_smooth

__all__ = [
    "N_BINS",
    "aurc_features",
    "ece_features",
    "smece_features",
    "vectorised_aurc",
    "vectorised_ece",
    "vectorised_smece",
]

N_BINS = 15
_SMECE_CHUNK = 64  # resamples per batched FFT: 64 x 2 x ~4,000 complex values, about 8 MB


def ece_features(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S, n, 3) float64: equal-width bin index, top-label confidence and correctness of each row."""
    rows = []
    for p in probs:
        conf, correct = CF.top_label_confidence(p, labels, input="probs")
        rows.append(torch.stack([CF.uniform_bin_index(conf, N_BINS).double(), conf.double(), correct.double()], -1))
    return torch.stack(rows)


def vectorised_ece(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binned top-label ECE (l1, 15 bins) of each resample ``(chunk, n, 3)`` -> ``(chunk,)``."""
    index = features[..., 0].long()
    gap = torch.zeros(features.shape[0], N_BINS, dtype=torch.float64, device=features.device)
    gap.scatter_add_(1, index, features[..., 1] - features[..., 2])  # sum of (confidence - correct) per bin
    return gap.abs().sum(1) / features.shape[1]


def aurc_features(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S, n, 2) float64: top-label confidence and 0-1 loss of each row."""
    confidence, predicted = probs.max(-1)
    return torch.stack([confidence.double(), (predicted != labels).double()], -1)


def vectorised_aurc(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AURC of each resample ``(chunk, n, 2)`` -> ``(chunk,)`` (stable descending sort, as ``aurc``)."""
    order = torch.argsort(features[..., 0], dim=1, descending=True, stable=True)
    losses = features[..., 1].gather(1, order)
    k = torch.arange(1, features.shape[1] + 1, dtype=torch.float64, device=features.device)
    return (losses.cumsum(1) / k).mean(1)


def smece_features(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S, n, 2) float64: top-label confidence and residual (confidence - correct) of each row."""
    rows = []
    for p in probs:
        conf, correct = CF.top_label_confidence(p, labels, input="probs")
        rows.append(torch.stack([conf.double(), conf.double() - correct.double()], -1))
    return torch.stack(rows)


def _smece_block(features: torch.Tensor, sigma: float) -> torch.Tensor:
    points, residual = features[..., 0], features[..., 1]
    nodes = max(2000, round(20 / sigma)) // 2 + 1
    scaled = points * (nodes - 1)
    left = scaled.long().clamp_(0, nodes - 2)
    frac = scaled - left
    weights = torch.stack([residual, torch.ones_like(residual)], 1)  # (chunk, 2, n)
    grid = torch.zeros(points.shape[0], 2, nodes, dtype=torch.float64, device=points.device)
    index = left.unsqueeze(1).expand(-1, 2, -1)
    grid.scatter_add_(2, index, weights * (1 - frac).unsqueeze(1))
    grid.scatter_add_(2, index + 1, weights * frac.unsqueeze(1))
    smoothed = _reflected_gaussian_smooth(grid, sigma)
    t = torch.linspace(0, 1, max(round(10 / sigma), 200), dtype=torch.float64, device=points.device)
    interpolated = _interpolate(t, smoothed)
    return interpolated[:, 0].abs().sum(-1) / (interpolated[:, 1] + 1e-4).sum(-1)


def vectorised_smece(sigma: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """SmECE at bandwidth ``sigma`` of each resample ``(chunk, n, 2)`` -> ``(chunk,)``."""

    def statistic(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([_smece_block(block, sigma) for block in features.split(_SMECE_CHUNK)])

    return statistic
