"""Paired tests for comparing classifiers, named as in mlxtend and Raschka (2018).

McNemar (1947) on one test set, Cochran's Q (1950) for several classifiers on one test set, the
5x2cv paired t-test (Dietterich 1998) and the combined 5x2cv F-test (Alpaydin 1999), and Holm's
(1979) step-down correction when several methods are each compared with a baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from lightning_mix.evaluation._distributions import binom_cdf, chi2_sf, f_sf, t_sf

__all__ = [
    "cochrans_q",
    "combined_ftest_5x2cv",
    "combined_ftest_5x2cv_from_scores",
    "five_by_two_cv_scores",
    "holm_correction",
    "mcnemar",
    "mcnemar_table",
    "paired_ttest_5x2cv",
    "paired_ttest_5x2cv_from_scores",
]

FitPredict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]


def _labels(t: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class labels, got shape {tuple(t.shape)}.")
    return t


def mcnemar_table(y_target: torch.Tensor, y_model1: torch.Tensor, y_model2: torch.Tensor) -> torch.Tensor:
    """2x2 contingency table: [[both right, only model 1 right], [only model 2 right, both wrong]]."""
    y_target, y_model1, y_model2 = (
        _labels(t, n) for t, n in ((y_target, "y_target"), (y_model1, "y_model1"), (y_model2, "y_model2"))
    )
    if not y_target.shape == y_model1.shape == y_model2.shape:
        raise ValueError("y_target, y_model1 and y_model2 must have the same length.")
    right1, right2 = y_model1 == y_target, y_model2 == y_target
    return torch.stack(
        [
            torch.stack([(right1 & right2).sum(), (right1 & ~right2).sum()]),
            torch.stack([(~right1 & right2).sum(), (~right1 & ~right2).sum()]),
        ]
    ).long()


def mcnemar(table: torch.Tensor, corrected: bool = True, exact: bool = False) -> tuple[float | None, float]:
    """McNemar's test on a 2x2 table from :func:`mcnemar_table`: ``(chi2, p_value)``.

    ``exact=True`` gives the two-sided exact binomial test on the discordant counts b and c
    (``chi2`` is then ``None``, as in mlxtend); otherwise the chi-squared statistic with one degree
    of freedom, with Edwards' continuity correction ``(|b - c| - 1)^2 / (b + c)`` when
    ``corrected`` (the default). Recommended when b + c < 25: ``exact=True``.
    """
    table = torch.as_tensor(table)
    if table.shape != (2, 2):
        raise ValueError(f"table must be a 2x2 contingency table (see mcnemar_table), got shape {tuple(table.shape)}.")
    b, c = int(table[0, 1]), int(table[1, 0])
    if b + c == 0:
        raise ValueError(
            "The two models never disagree (b + c = 0): McNemar's test is undefined; they are identical here."
        )
    if exact:
        return None, min(1.0, 2.0 * binom_cdf(min(b, c), b + c, 0.5))
    chi2 = ((abs(b - c) - 1.0) ** 2 if corrected else float(b - c) ** 2) / (b + c)
    return chi2, chi2_sf(chi2, 1)


def cochrans_q(y_target: torch.Tensor, *y_model_predictions: torch.Tensor) -> tuple[float, float]:
    """Cochran's Q test that M >= 2 classifiers have the same accuracy on one test set: ``(q, p_value)``.

    Q = (M - 1) [M sum_j C_j^2 - T^2] / (M T - sum_i R_i^2), with C_j the number of samples
    model j gets right, R_i the number of models that get sample i right and T = sum_j C_j;
    chi-squared with M - 1 degrees of freedom.
    """
    if len(y_model_predictions) < 2:
        raise ValueError(f"cochrans_q needs at least two models' predictions, got {len(y_model_predictions)}.")
    target = _labels(y_target, "y_target")
    right = torch.stack([_labels(p, "y_model_predictions").eq(target) for p in y_model_predictions]).double()  # (M, n)
    m = right.shape[0]
    per_model, per_sample = right.sum(1), right.sum(0)
    total = per_model.sum()
    denominator = m * total - per_sample.pow(2).sum()
    if denominator == 0:
        raise ValueError("Cochran's Q is undefined: every sample is right for all models or for none.")
    q = float((m - 1) * (m * per_model.pow(2).sum() - total**2) / denominator)
    return q, chi2_sf(q, m - 1)


def five_by_two_cv_scores(
    fit_predict_1: FitPredict,
    fit_predict_2: FitPredict,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    score: Score,
    seed: int = 0,
) -> torch.Tensor:
    """Scores of two learning rules over 5 replications of 2-fold CV: a ``(5, 2, 2)`` tensor
    ``[replication, fold, model]``. Each replication draws a seeded random half split; fold 0
    trains on the first half and scores on the second, fold 1 the reverse.

    ``fit_predict(train_inputs, train_targets, eval_inputs) -> predictions`` and
    ``score(predictions, targets)`` (higher is better, e.g. accuracy).
    """
    n = targets.shape[0]
    if inputs.shape[0] != n or n < 4:
        raise ValueError(
            f"inputs and targets need the same number of rows (at least 4), got {inputs.shape[0]} and {n}."
        )
    generator = torch.Generator().manual_seed(seed)
    scores = torch.empty(5, 2, 2, dtype=torch.float64)
    for i in range(5):
        order = torch.randperm(n, generator=generator).to(inputs.device)
        halves = (order[n // 2 :], order[: n // 2])
        for fold in range(2):
            train, test = halves[fold], halves[1 - fold]
            for j, fit_predict in enumerate((fit_predict_1, fit_predict_2)):
                preds = fit_predict(inputs[train], targets[train], inputs[test])
                scores[i, fold, j] = float(score(preds, targets[test]))
    return scores


def _differences(scores_1: torch.Tensor, scores_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores_1, scores_2 = torch.as_tensor(scores_1, dtype=torch.float64), torch.as_tensor(scores_2, dtype=torch.float64)
    if scores_1.shape != (5, 2) or scores_2.shape != (5, 2):
        raise ValueError(
            "5x2cv scores must have shape (5, 2) (replication, fold), "
            f"got {tuple(scores_1.shape)} and {tuple(scores_2.shape)}."
        )
    diff = scores_1 - scores_2
    variance = (diff - diff.mean(1, keepdim=True)).pow(2).sum(1)  # s_i^2 per replication
    if variance.sum() == 0:
        raise ValueError("The score differences do not vary across folds: the 5x2cv statistic is undefined.")
    return diff, variance


def paired_ttest_5x2cv_from_scores(scores_1: torch.Tensor, scores_2: torch.Tensor) -> tuple[float, float]:
    """Dietterich's 5x2cv paired t-test from (5, 2) score tables: ``(t, p_value)``, two-sided, 5 d.o.f.

    t = p_1^(1) / sqrt(mean_i s_i^2), with p_1^(1) the difference on fold 1 of replication 1.
    """
    diff, variance = _differences(scores_1, scores_2)
    t = float(diff[0, 0] / math.sqrt(float(variance.mean())))
    return t, min(1.0, 2.0 * t_sf(abs(t), 5))


def combined_ftest_5x2cv_from_scores(scores_1: torch.Tensor, scores_2: torch.Tensor) -> tuple[float, float]:
    """Alpaydin's combined 5x2cv F-test from (5, 2) score tables: ``(f, p_value)``, F(10, 5).

    f = sum_ij p_ij^2 / (2 sum_i s_i^2).
    """
    diff, variance = _differences(scores_1, scores_2)
    f = float(diff.pow(2).sum() / (2.0 * variance.sum()))
    return f, f_sf(f, 10, 5)


def paired_ttest_5x2cv(
    fit_predict_1: FitPredict,
    fit_predict_2: FitPredict,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    score: Score,
    seed: int = 0,
) -> tuple[float, float]:
    """5x2cv paired t-test of two learning rules (see :func:`five_by_two_cv_scores`): ``(t, p_value)``."""
    scores = five_by_two_cv_scores(fit_predict_1, fit_predict_2, inputs, targets, score, seed)
    return paired_ttest_5x2cv_from_scores(scores[..., 0], scores[..., 1])


def combined_ftest_5x2cv(
    fit_predict_1: FitPredict,
    fit_predict_2: FitPredict,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    score: Score,
    seed: int = 0,
) -> tuple[float, float]:
    """Combined 5x2cv F-test of two learning rules (see :func:`five_by_two_cv_scores`): ``(f, p_value)``."""
    scores = five_by_two_cv_scores(fit_predict_1, fit_predict_2, inputs, targets, score, seed)
    return combined_ftest_5x2cv_from_scores(scores[..., 0], scores[..., 1])


def holm_correction(p_values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Holm's step-down adjusted p-values (controls the family-wise error rate).

    Sorted ascending, p_(k) becomes max_{j <= k} min(1, (m - j + 1) p_(j)); returned in the
    input order. Reject hypothesis i at level alpha when ``adjusted[i] <= alpha``.
    """
    p = torch.as_tensor(p_values, dtype=torch.float64).flatten()
    if p.numel() == 0 or ((p < 0) | (p > 1) | p.isnan()).any():
        raise ValueError(f"p_values must be a non-empty list of probabilities in [0, 1], got {p.tolist()}.")
    m = p.numel()
    order = torch.argsort(p, stable=True)
    scaled = (p[order] * torch.arange(m, 0, -1, dtype=torch.float64)).clamp(max=1.0)
    adjusted = torch.empty_like(p)
    adjusted[order] = torch.cummax(scaled, 0).values
    return adjusted
