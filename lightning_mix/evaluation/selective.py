"""Selective prediction (the reject option): risk-coverage curve, AURC, E-AURC, accuracy at a coverage.

Following Geifman, Uziel and El-Yaniv, "Bias-reduced uncertainty estimation for deep neural
classifiers" (ICLR 2019): samples are ranked by confidence (highest first); at coverage k/n the
model answers the k most confident samples and the selective risk is their mean loss. AURC is the
mean of the selective risk over k = 1..n, and E-AURC subtracts the AURC of the ideal ranking
(every error rejected before any correct prediction), so it isolates the ranking quality from
the error rate.
"""

from __future__ import annotations

import math

import torch

__all__ = ["aurc", "excess_aurc", "risk_coverage_curve", "selective_accuracy"]


def _check(confidence: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if confidence.dim() != 1 or loss.shape != confidence.shape or confidence.numel() == 0:
        raise ValueError(
            f"confidence and loss must be non-empty 1-D tensors of the same length, got {tuple(confidence.shape)} "
            f"and {tuple(loss.shape)}. For a 0-1 loss pass (preds != target)."
        )
    return confidence, loss.double()


def risk_coverage_curve(confidence: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coverage, risk)``, each of length n: coverage k/n and the mean loss of the k most confident.

    ``loss`` is the per-sample loss (for the error rate: ``(preds != target)``). Ties in
    confidence are kept in input order (a stable sort), as Geifman et al.'s code does.
    """
    confidence, loss = _check(confidence, loss)
    order = torch.argsort(confidence, descending=True, stable=True)
    k = torch.arange(1, loss.numel() + 1, dtype=torch.float64, device=loss.device)
    return k / loss.numel(), loss[order].cumsum(0) / k


def aurc(confidence: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Area under the risk-coverage curve: the mean selective risk over coverages 1/n .. 1."""
    return risk_coverage_curve(confidence, loss)[1].mean()


def excess_aurc(confidence: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """E-AURC = AURC - AURC of the ideal confidence (losses sorted ascending).

    Computed exactly on the n samples, for any loss; for the 0-1 loss Geifman et al. give the
    large-n approximation r + (1 - r) ln(1 - r) of the ideal term (r the error rate), which this
    approaches as n grows.
    """
    confidence, loss = _check(confidence, loss)
    ideal = -loss  # the most confident are the smallest losses
    return aurc(confidence, loss) - aurc(ideal, loss)


def selective_accuracy(confidence: torch.Tensor, correct: torch.Tensor, coverage: float) -> torch.Tensor:
    """Accuracy on the ``ceil(coverage * n)`` most confident samples (``coverage`` in (0, 1])."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}.")
    confidence, correct = _check(confidence, correct)
    k = max(1, math.ceil(coverage * correct.numel() - 1e-9))
    order = torch.argsort(confidence, descending=True, stable=True)
    return correct[order[:k]].mean()
