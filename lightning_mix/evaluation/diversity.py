"""Diversity of an ensemble of classifiers, measured on stored member probabilities.

``member_probs`` is a ``(M, n, C)`` tensor: M members' class probabilities for n samples.
Disagreement is the pairwise rate of differing predicted labels (Kuncheva and Whitaker 2003).
The ensemble gain is mean member loss minus the loss of the averaged prediction; for the Brier
score it equals the ambiguity (the members' mean squared distance to the average: Krogh and
Vedelsby 1995), for the NLL it is the Jensen gap that Abe et al. ("Pathologies of predictive
diversity in deep ensembles", 2023) call predictive diversity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["EnsembleGain", "ensemble_gain", "pairwise_disagreement"]


def _check_members(member_probs: torch.Tensor) -> torch.Tensor:
    if member_probs.dim() != 3 or member_probs.shape[0] < 2:
        raise ValueError(
            f"member_probs must have shape (M >= 2 members, n samples, C classes), got {tuple(member_probs.shape)}."
        )
    return member_probs.double()


def pairwise_disagreement(member_probs: torch.Tensor) -> torch.Tensor:
    """Mean over member pairs (i < j) of the fraction of samples whose predicted labels differ."""
    labels = _check_members(member_probs).argmax(-1)  # (M, n)
    m = labels.shape[0]
    differ = (labels[:, None, :] != labels[None, :, :]).double().mean(-1)  # (M, M)
    return differ.triu(diagonal=1).sum() / (m * (m - 1) / 2)


@dataclass(frozen=True)
class EnsembleGain:
    """``member_loss`` (mean over members), ``ensemble_loss`` (of the averaged probabilities),
    ``gain = member_loss - ensemble_loss`` and ``ambiguity`` (mean squared distance of members to
    the average: equal to the gain for the Brier score).
    """

    member_loss: float
    ensemble_loss: float
    gain: float
    ambiguity: float


def _per_sample_loss(probs: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "nll":
        return -probs.gather(-1, target.expand(*probs.shape[:-1]).unsqueeze(-1)).squeeze(-1).clamp_min(1e-300).log()
    one_hot = torch.nn.functional.one_hot(target, probs.shape[-1]).double()
    return (probs - one_hot).pow(2).sum(-1)


def ensemble_gain(member_probs: torch.Tensor, target: torch.Tensor, loss: str = "nll") -> EnsembleGain:
    """How much averaging the members' probabilities lowers the loss (``"nll"`` or ``"brier"``)."""
    if loss not in ("nll", "brier"):
        raise ValueError(f"loss must be 'nll' or 'brier', got {loss!r}.")
    probs = _check_members(member_probs)
    if target.shape != probs.shape[1:2]:
        raise ValueError(f"target must have shape ({probs.shape[1]},) (class labels), got {tuple(target.shape)}.")
    mean = probs.mean(0)
    member = float(_per_sample_loss(probs, target, loss).mean())
    ensemble = float(_per_sample_loss(mean, target, loss).mean())
    ambiguity = float((probs - mean).pow(2).sum(-1).mean())
    return EnsembleGain(member, ensemble, member - ensemble, ambiguity)
