"""How ModelSoup scores a set of weights: a mean of per-sample scores over the validation batches.

A scorer is ``score(module, batch) -> tensor`` of per-sample values (any shape; every element
counts as one sample, a 0-d tensor as one value for the batch). The score of a model is the sum of
all values over all batches and all ranks divided by their count, so it is exact under DDP whatever
the ranks' shard sizes. Built-in: ``"accuracy"`` (top-1, held-out accuracy as in Wortsman et al.
2022; higher is better) and ``"nll"`` (cross-entropy of the logits; lower is better).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.callbacks._batch_feed import BatchKey, batch_entry, model_input

__all__ = ["LabelScore", "Scorer", "default_mode", "mean_score", "resolve_scorer", "score_name"]

Scorer = Callable[[nn.Module, Any], torch.Tensor]
_BUILTIN_MODES = {"accuracy": "max", "nll": "min"}
_BUILTIN_NAMES = {"accuracy": "acc", "nll": "nll"}


class LabelScore:
    """Per-sample accuracy or NLL of ``module(input)`` against class indices or dense (soft) targets."""

    def __init__(self, kind: str, input_key: BatchKey | None, target_key: BatchKey | None) -> None:
        self.kind, self.input_key, self.target_key = kind, input_key, target_key
        self.__name__ = kind

    def target(self, batch: Any) -> torch.Tensor:
        if self.target_key is not None:
            target = batch_entry(batch, self.target_key, "ModelSoup", "target_key")
        elif isinstance(batch, (list, tuple)) and len(batch) > 1:
            target = batch[1]
        else:
            raise KeyError(
                f"ModelSoup(score={self.kind!r}) needs the labels: the batch is a {type(batch).__name__} "
                "without a second entry; set target_key to the index/key of the labels (or give score= a callable)."
            )
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"ModelSoup: the labels must be a tensor, got {type(target).__name__}; set target_key.")
        return target

    def model_input(self, batch: Any) -> Any:
        return model_input(batch, self.input_key, "ModelSoup")

    def __call__(self, module: nn.Module, batch: Any) -> torch.Tensor:
        return self.from_logits(module(self.model_input(batch)), batch)

    def from_logits(self, logits: torch.Tensor, batch: Any) -> torch.Tensor:
        """The per-sample values for logits the module already computed on ``batch``'s model input."""
        target = self.target(batch)
        dense = target.is_floating_point() and target.dim() == logits.dim()
        if self.kind == "accuracy":
            labels = target.argmax(-1) if dense else target
            return (logits.argmax(-1) == labels).float()
        return F.cross_entropy(logits.float(), target.float() if dense else target, reduction="none")


def resolve_scorer(score: str | Scorer, input_key: BatchKey | None, target_key: BatchKey | None) -> Scorer:
    """The scorer for ``score``: a built-in name, an import path ``"package.module.function"``, or a callable."""
    if callable(score):
        return score
    if score in _BUILTIN_MODES:
        return LabelScore(score, input_key, target_key)
    if "." not in score:
        raise ValueError(
            f"ModelSoup(score={score!r}): use one of {sorted(_BUILTIN_MODES)}, an import path "
            "'package.module.function' or a callable score(module, batch) -> per-sample tensor."
        )
    module_name, _, attribute = score.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"ModelSoup(score={score!r}): cannot import it ({error}).") from error
    if not callable(found):
        raise TypeError(f"ModelSoup(score={score!r}) is a {type(found).__name__}, not a callable.")
    return found


def default_mode(score: str | Scorer, mode: str | None) -> str:
    """``mode`` if given, else the built-in score's (accuracy: max, nll: min); a custom score needs it."""
    if mode is not None:
        if mode not in ("max", "min"):
            raise ValueError(f"ModelSoup(mode={mode!r}): use 'max' (e.g. accuracy) or 'min' (e.g. a loss).")
        return mode
    if isinstance(score, str) and score in _BUILTIN_MODES:
        return _BUILTIN_MODES[score]
    raise ValueError(f"ModelSoup(score={score!r}) needs mode='max' (higher is better) or mode='min'.")


def score_name(score: str | Scorer) -> str:
    """The name results are logged under: ``acc``, ``nll``, or the custom scorer's name."""
    if isinstance(score, str):
        return _BUILTIN_NAMES.get(score, score.rpartition(".")[2])
    return getattr(score, "__name__", type(score).__name__)


def mean_score(
    module: nn.Module,
    batches: Iterable[Any],
    scorer: Scorer,
    forward_context: Callable[[], Any],
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> float:
    """Mean of ``scorer``'s values over ``batches`` in eval mode without gradients, summed over ranks
    by ``all_reduce_sum`` (sum and count in float64, so accuracy is exact); NaN when no value was seen."""
    dtype = torch.float32 if device.type == "mps" else torch.float64
    totals = torch.zeros(2, dtype=dtype, device=device)  # sum, count
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                with forward_context():
                    values = scorer(module, batch)
                if not isinstance(values, torch.Tensor):
                    raise TypeError(
                        f"ModelSoup: score(module, batch) must return a tensor, got {type(values).__name__}."
                    )
                values = values.detach().to(device=device, dtype=dtype).reshape(-1)
                totals[0] += values.sum()
                totals[1] += values.numel()
    finally:
        for submodule, training in modes:
            submodule.training = training
    totals = all_reduce_sum(totals)
    total, count = totals.tolist()
    return total / count if count > 0 else float("nan")
