"""The .632 and .632+ bootstrap estimates of prediction error (Efron 1983; Efron and Tibshirani 1997).

For small data sets, where a held-out split wastes samples: the rule is refitted on ``n_splits``
bootstrap samples and scored on the samples each one left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Point632Result", "bootstrap_point632_error", "zero_one_loss"]

_METHODS = (".632", ".632+", "oob")
_AGGREGATES = ("pooled", "per_split")
FitPredict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def zero_one_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample 0-1 loss. ``preds`` are labels ``(n,)`` or scores ``(n, C)`` (the argmax is taken).

    Broadcasts, so ``zero_one_loss(preds[None, :], targets[:, None])`` is the ``(n, n)`` matrix of
    every (target, prediction) pair that the no-information error needs.
    """
    labels = preds.argmax(-1) if preds.is_floating_point() and preds.dim() > targets.dim() else preds
    return (labels != targets).double()


@dataclass(frozen=True)
class Point632Result:
    """The estimate (``error``) and its parts.

    ``resubstitution`` is the apparent error err-bar, ``out_of_bag`` the leave-one-out bootstrap
    error Err^(1), ``no_information`` gamma, ``relative_overfitting`` R and ``weight`` w in
    ``error = (1 - w) * resubstitution + w * out_of_bag``. With ``aggregate="per_split"`` the
    parts are means over splits and ``per_split`` holds each split's estimate. ``no_information``
    is NaN unless ``method=".632+"`` (only .632+ needs it).
    """

    error: float
    resubstitution: float
    out_of_bag: float
    no_information: float
    relative_overfitting: float
    weight: float
    per_split: torch.Tensor | None = None


def _no_information_error(preds: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """gamma: mean loss over all n^2 (target_i, prediction_j) pairs, one row block at a time."""
    n = targets.shape[0]
    total = 0.0
    rows = max(1, 2**22 // n)
    for start in range(0, n, rows):
        block = targets[start : start + rows]
        total += float(loss(preds.unsqueeze(0), block.unsqueeze(1)).sum())
    return total / (n * n)


def _combine(err: float, oob: float, gamma: float, method: str) -> tuple[float, float, float]:
    """(estimate, R, w) per Efron and Tibshirani (1997), eqs. 27-32 (R clipped to [0, 1], Err1 to gamma)."""
    if method == "oob":
        return oob, 0.0, 1.0
    if method == ".632":
        return 0.368 * err + 0.632 * oob, 0.0, 0.632
    oob_capped = min(oob, gamma)
    ratio = (oob_capped - err) / (gamma - err) if oob_capped > err and gamma > err else 0.0
    weight = 0.632 / (1.0 - 0.368 * ratio)
    return (1.0 - weight) * err + weight * oob_capped, ratio, weight


def bootstrap_point632_error(
    fit_predict: FitPredict,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_splits: int = 200,
    method: str = ".632+",
    loss: Loss = zero_one_loss,
    seed: int = 0,
    aggregate: str = "pooled",
    split_indices: torch.Tensor | None = None,
) -> Point632Result:
    """.632 / .632+ bootstrap estimate of the prediction error of a learning rule.

    Args:
        fit_predict: ``fit_predict(train_inputs, train_targets, eval_inputs) -> predictions``:
            fits a fresh model on the training rows and predicts ``eval_inputs`` (all n rows).
        inputs: the data set's inputs; the first dimension is the sample.
        targets: the data set's targets, one per input row.
        n_splits: number of bootstrap samples B.
        method: ``".632+"`` (Efron and Tibshirani 1997, the default they recommend), ``".632"``
            (Efron 1983) or ``"oob"`` (the leave-one-out bootstrap error alone).
        loss: per-sample loss ``loss(preds, targets) -> (n,)`` that broadcasts (see
            :func:`zero_one_loss`, the default).
        seed: seeds the bootstrap draws.
        aggregate: ``"pooled"`` follows Efron and Tibshirani: err-bar and gamma from a fit on the
            whole data, Err^(1) as the mean over samples of each sample's mean out-of-bag loss,
            then one combination. ``"per_split"`` combines within each split (the split's own fit
            gives the resubstitution error on all n rows and gamma) and averages the split
            estimates, as Raschka (2018, sec. 2.4) and mlxtend's ``bootstrap_point632_score`` do
            (Efron and Tibshirani's caps, R in [0, 1] and Err^(1) <= gamma, apply in both forms;
            mlxtend applies none, so the two agree whenever a split needs no cap).
        split_indices: optional ``(n_splits, n)`` long tensor of bootstrap rows to use instead of
            drawing them (to reproduce another tool's splits).

    Returns:
        :class:`Point632Result`. The error is a loss (lower is better); ``1 - error`` is the
        accuracy for the 0-1 loss.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    if aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES}, got {aggregate!r}.")
    n = targets.shape[0]
    if inputs.shape[0] != n or n < 2:
        raise ValueError(
            f"inputs and targets need the same number of rows (at least 2), got {inputs.shape[0]} and {n}."
        )
    if split_indices is None:
        if n_splits < 1:
            raise ValueError(f"n_splits must be at least 1, got {n_splits}.")
        generator = torch.Generator().manual_seed(seed)
        split_indices = torch.randint(n, (n_splits, n), generator=generator)
    elif split_indices.dim() != 2 or split_indices.shape[1] != n:
        raise ValueError(f"split_indices must have shape (n_splits, {n}), got {tuple(split_indices.shape)}.")
    split_indices = split_indices.to(inputs.device)
    oob_loss_sum = torch.zeros(n, dtype=torch.float64)
    oob_count = torch.zeros(n, dtype=torch.float64)
    per_split = []
    for rows in split_indices:
        in_bag = torch.zeros(n, dtype=torch.bool, device=inputs.device)
        in_bag[rows] = True
        out = (~in_bag).cpu()
        if not out.any():
            continue
        preds = fit_predict(inputs[rows], targets[rows], inputs)
        sample_loss = loss(preds, targets).double().cpu()
        oob_loss_sum += torch.where(out, sample_loss, 0.0)
        oob_count += out.double()
        if aggregate == "per_split":
            err = float(sample_loss.mean())
            gamma = _no_information_error(preds, targets, loss) if method == ".632+" else float("nan")
            per_split.append(
                (
                    *_combine(err, float(sample_loss[out].mean()), gamma, method),
                    err,
                    float(sample_loss[out].mean()),
                    gamma,
                )
            )
    if aggregate == "per_split":
        table = torch.tensor(per_split, dtype=torch.float64)
        means = table.mean(0).tolist()
        return Point632Result(
            error=means[0],
            resubstitution=means[3],
            out_of_bag=means[4],
            no_information=means[5],
            relative_overfitting=means[1],
            weight=means[2],
            per_split=table[:, 0],
        )
    seen = oob_count > 0
    if not seen.any():
        raise ValueError("No sample was ever out of bag; use more n_splits.")
    oob = float((oob_loss_sum[seen] / oob_count[seen]).mean())
    full_preds = fit_predict(inputs, targets, inputs)
    err = float(loss(full_preds, targets).double().mean())
    gamma = _no_information_error(full_preds, targets, loss) if method == ".632+" else float("nan")
    estimate, ratio, weight = _combine(err, oob, gamma, method)
    return Point632Result(estimate, err, oob, gamma, ratio, weight)
