"""torchmetrics ``Metric`` forms of the selective-prediction and diversity measures.

They follow the functions of :mod:`lightning_mix.evaluation.selective` and
:mod:`lightning_mix.evaluation.diversity` (a class over many batches equals the function over the
concatenated data). AURC, E-AURC and selective accuracy rank *all* samples by confidence, so they
cannot stream: they keep two float32 values per sample (confidence and 0-1 loss), 8 bytes per
sample per process, and under DDP ``compute`` gathers every rank's lists (8 bytes x all samples
on each rank). :class:`EnsembleDiversity` streams: its state is a few float64 sums and an M x M
disagreement table, whatever the number of samples.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_mix.evaluation import diversity as D
from lightning_mix.evaluation import selective as S
from lightning_mix.metrics import functional as CF

__all__ = ["AURC", "EnsembleDiversity", "ExcessAURC", "SelectiveAccuracy"]


class _StoredConfidence(Metric):
    """Stores the top-label confidence and the 0-1 loss of every sample (8 bytes per sample)."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, input: str = "logits") -> None:
        super().__init__()
        if input not in ("logits", "probs"):
            raise ValueError(f"input must be 'logits' or 'probs', got {input!r}.")
        self.input = input
        self.add_state("confidence", default=[], dist_reduce_fx="cat")
        self.add_state("loss", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``preds`` (N, C) logits or probabilities as ``input`` says, ``target`` (N,) labels."""
        preds, target = CF.prepare_inputs(preds, target, self.input, validate_args=False)
        confidence, correct = CF.top_label_confidence(preds, target, self.input)
        self.confidence.append(confidence.float())
        self.loss.append(1.0 - correct.float())

    def _stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.confidence:
            raise RuntimeError(f"{type(self).__name__}.compute() was called before any update().")
        return dim_zero_cat(self.confidence), dim_zero_cat(self.loss)


class AURC(_StoredConfidence):
    """Area under the risk-coverage curve of the 0-1 loss ranked by top-label confidence (lower is better).

    Example::

        metric = AURC(input="logits")
        metric.update(logits, labels)
        metric.compute()
    """

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        return S.aurc(*self._stored())


class ExcessAURC(_StoredConfidence):
    """E-AURC: AURC minus the AURC of the ideal ranking (see :func:`~lightning_mix.evaluation.excess_aurc`)."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        return S.excess_aurc(*self._stored())


class SelectiveAccuracy(_StoredConfidence):
    """Accuracy on the ``ceil(coverage * n)`` most confident samples."""

    higher_is_better = True

    def __init__(self, coverage: float = 0.9, input: str = "logits") -> None:
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must lie in (0, 1], got {coverage}.")
        super().__init__(input=input)
        self.coverage = coverage

    def compute(self) -> torch.Tensor:
        confidence, loss = self._stored()
        return S.selective_accuracy(confidence, 1.0 - loss, self.coverage)


class EnsembleDiversity(Metric):
    """Pairwise disagreement and ensemble gain of M members, streamed over batches.

    ``update(member_probs, target)`` takes ``(M, N, C)`` class probabilities and ``(N,)`` labels.
    ``compute()`` returns a dict with ``disagreement``, ``member_loss``, ``ensemble_loss``,
    ``gain`` and ``ambiguity`` as :func:`~lightning_mix.evaluation.ensemble_gain` and
    :func:`~lightning_mix.evaluation.pairwise_disagreement` define them.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_members: int, loss: str = "nll") -> None:
        super().__init__()
        if num_members < 2:
            raise ValueError(f"num_members must be at least 2, got {num_members}.")
        if loss not in ("nll", "brier"):
            raise ValueError(f"loss must be 'nll' or 'brier', got {loss!r}.")
        self.num_members = num_members
        self.loss = loss
        self.add_state(
            "differ", default=torch.zeros(num_members, num_members, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("sums", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, member_probs: torch.Tensor, target: torch.Tensor) -> None:
        if member_probs.dim() != 3 or member_probs.shape[0] != self.num_members:
            raise ValueError(
                f"member_probs must have shape ({self.num_members}, N, C), got {tuple(member_probs.shape)}."
            )
        probs = member_probs.double()
        labels = probs.argmax(-1)
        self.differ += (labels[:, None, :] != labels[None, :, :]).double().sum(-1)
        mean = probs.mean(0)
        member = D._per_sample_loss(probs, target, self.loss).mean(0).sum()
        ensemble = D._per_sample_loss(mean, target, self.loss).sum()
        ambiguity = (probs - mean).pow(2).sum(-1).mean(0).sum()
        self.sums += torch.stack([member, ensemble, ambiguity])
        self.count += target.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        m = self.num_members
        member, ensemble, ambiguity = self.sums / self.count
        return {
            "disagreement": self.differ.triu(diagonal=1).sum() / self.count / (m * (m - 1) / 2),
            "member_loss": member,
            "ensemble_loss": ensemble,
            "gain": member - ensemble,
            "ambiguity": ambiguity,
        }
