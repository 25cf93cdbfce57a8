"""Calibration metrics as pure functions (torch only), the functional half of ``lightning_mix.metrics``.

Every function takes the whole data at once: ``preds`` of shape (N, C) (logits or probabilities,
as ``input`` says; never guessed) or (N,) for a binary problem (the logit or probability of the
positive class), and integer class labels ``target`` of shape (N,). The Metric classes in
:mod:`lightning_mix.metrics.calibration` keep only additive per-bin sums and call the same
reductions, so the class and the function agree.

Binary problems (1-D ``preds``): ``binary="top_label"`` (default) treats them as the two-class
problem {1 - p, p} and measures the top label (confidence ``max(p, 1 - p)``, correct when the
predicted class, ``p > 0.5``, is the label); ``binary="positive"`` measures the positive class
only (confidence ``p``, "accuracy" the label itself), which is what torchmetrics'
``BinaryCalibrationError`` computes.

Bins: equal-width bins are ``[k/n, (k+1)/n)`` with a confidence of exactly 1.0 in the last bin
and 0.0 in the first (torchmetrics puts 1.0 in a hidden extra bin, torchmetrics #3510).

Bad input (functions and classes alike): with ``validate_args=True`` (default) non-finite preds
(nan or inf: a diverged or overflowed model), labels outside ``[0, C)`` and probabilities that do
not sum to one raise a ``ValueError`` that names the problem; the check costs one host
synchronisation per call. With ``validate_args=False`` nothing is checked up front: non-finite
preds give nan, and an out-of-range label still raises the same clear error where indexing
catches it (CPU). No samples at all (empty data, or a class that saw only empty updates) gives
nan with a ``UserWarning``, never 0.0, which would read as "perfectly calibrated".
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_INPUTS = ("logits", "probs")
_BINARY = ("top_label", "positive")
_NORMS = ("l1", "l2", "max")
_BINNINGS = ("uniform", "quantile")
_KINDS = ("top_label", "classwise", "marginal")
PROB_SUM_TOLERANCE = 1e-3

__all__ = [
    "brier_score",
    "calibration_error",
    "negative_log_likelihood",
    "overconfidence_error",
    "reliability_diagram",
    "smooth_ece",
    "underconfidence_error",
]


# --------------------------------------------------------------------------------------------
# argument and input checks
# --------------------------------------------------------------------------------------------


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def check_calibration_args(
    n_bins: int,
    norm: str = "l1",
    binning: str = "uniform",
    kind: str = "top_label",
    debias: bool = False,
    input: str = "logits",
    binary: str = "top_label",
) -> None:
    """Validate the arguments shared by the calibration-error functions and Metric classes."""
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    _check_choice("norm", norm, _NORMS)
    _check_choice("binning", binning, _BINNINGS)
    _check_choice("kind", kind, _KINDS)
    _check_choice("input", input, _INPUTS)
    _check_choice("binary", binary, _BINARY)
    if debias and norm != "l2":
        raise ValueError(
            f"debias=True is the debiased l2 estimator of Kumar et al. (2019); it needs norm='l2', got norm={norm!r}."
        )


def _check_shapes(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.dim() not in (1, 2):
        raise ValueError(
            f"preds must be (N, C) class scores or (N,) positive-class scores, got shape {tuple(preds.shape)}."
        )
    if target.dim() != 1 or target.shape[0] != preds.shape[0]:
        raise ValueError(
            f"target must be (N,) class labels matching preds' first dimension {preds.shape[0]}, "
            f"got shape {tuple(target.shape)}."
        )
    if target.is_floating_point():
        raise ValueError(
            f"target must hold integer class labels, got dtype {target.dtype}; "
            "for dense (soft) targets take target.argmax(-1)."
        )
    if preds.dim() == 2 and preds.shape[1] < 2:
        raise ValueError(f"preds of shape (N, C) need C >= 2 classes, got C={preds.shape[1]}; pass (N,) for binary.")


def _label_error(target: torch.Tensor, num_classes: int) -> ValueError:
    low, high = torch.aminmax(target)
    return ValueError(
        f"target holds labels outside [0, {num_classes}) (min {int(low)}, max {int(high)}); "
        "check num_classes or the labels."
    )


def check_values(preds: torch.Tensor, target: torch.Tensor, input: str) -> None:
    """Value checks (one host synchronisation): finite preds, labels in range, probabilities that sum to one.

    Finiteness is read from the row sums (a nan or inf entry makes its row's sum non-finite), which
    costs one pass over the batch that the probability check needs anyway; a row sum that merely
    overflows is confirmed against the entries before anything is raised.
    """
    num_classes = 2 if preds.dim() == 1 else preds.shape[1]
    if target.numel() == 0:
        return
    low, high = torch.aminmax(target)
    bad_target = (low < 0) | (high >= num_classes)
    row_sums = preds.sum(-1) if preds.dim() == 2 else preds
    bad_finite = ~torch.isfinite(row_sums).all()
    if input == "probs":
        if preds.dim() == 2:
            bad_probs = (row_sums - 1).abs().amax() > PROB_SUM_TOLERANCE
        else:
            lo, hi = torch.aminmax(preds)
            bad_probs = (lo < 0) | (hi > 1)
    else:
        bad_probs = torch.zeros((), dtype=torch.bool, device=preds.device)
    if bool(bad_target | bad_probs | bad_finite):
        if bool(bad_finite) and not bool(torch.isfinite(preds).all()):
            raise non_finite_error(preds, "preds")
        if bool(bad_target):
            raise _label_error(target, num_classes)
        if not bool(bad_probs):
            return  # only a row sum overflowed; the entries are finite
        if preds.dim() == 2:
            worst = float((row_sums - 1).abs().amax())
            raise ValueError(
                f"input='probs' but rows of preds do not sum to one (largest deviation {worst:.3g}); "
                "pass input='logits' for unnormalised scores, or normalise the probabilities."
            )
        raise ValueError("input='probs' but binary preds lie outside [0, 1]; pass input='logits' for raw scores.")


def non_finite_error(values: torch.Tensor, name: str) -> ValueError:
    """The error for nan/inf model outputs: how many, and what to do."""
    bad = ~torch.isfinite(values)
    rows = int(bad.reshape(bad.shape[0], -1).any(-1).sum()) if bad.dim() else int(bad)
    return ValueError(
        f"{name} hold non-finite values (nan or inf) in {rows} of {values.shape[0] if values.dim() else 1} "
        "samples: the model's outputs have diverged or overflowed (e.g. in float16). Calibration is undefined "
        "for them; fix the model or its precision (validate_args=False skips this check and gives nan)."
    )


@contextmanager
def clear_label_errors(target: torch.Tensor, num_classes: int):
    """Turn torch's raw index error for an out-of-range label into the clear error of :func:`check_values`.

    Used where ``validate_args=False`` skipped the range check: the indexing itself fails (on the
    CPU) and the label range is examined only then, so valid batches pay nothing.
    """
    try:
        yield
    except (IndexError, RuntimeError) as err:
        if target.numel() and not target.is_floating_point():
            low, high = torch.aminmax(target)
            if bool((low < 0) | (high >= num_classes)):
                raise _label_error(target, num_classes) from err
        raise


def _warn_if_empty(preds: torch.Tensor, name: str) -> None:
    if preds.shape[0] == 0:
        warn_empty(name)


def num_classes_of(preds: torch.Tensor) -> int:
    """Number of classes of (N, C) scores, 2 for binary (N,) scores."""
    return 2 if preds.dim() == 1 else preds.shape[1]


def warn_empty(name: str) -> None:
    """Warn that a metric saw no samples (its value is nan, never a 'perfect' 0)."""
    warnings.warn(f"{name}: no samples were seen (empty data); the value is nan.", UserWarning, stacklevel=3)


def prepare_inputs(
    preds: torch.Tensor, target: torch.Tensor, input: str, validate_args: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes (always) and values (when ``validate_args``); cast preds to float32 or float64."""
    _check_choice("input", input, _INPUTS)
    _check_shapes(preds, target)
    if preds.dtype not in (torch.float32, torch.float64):
        preds = preds.float()
    if validate_args:
        check_values(preds, target, input)
    return preds, target


# --------------------------------------------------------------------------------------------
# confidences
# --------------------------------------------------------------------------------------------


def top_label_confidence(
    preds: torch.Tensor, target: torch.Tensor, input: str = "logits", binary: str = "top_label"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-label confidence and correctness (float 0/1) per sample; see the module docstring for binary."""
    if preds.dim() == 1:
        p = torch.sigmoid(preds) if input == "logits" else preds
        if binary == "positive":
            return p, target.to(p.dtype)
        predicted = p > 0.5
        conf = torch.where(predicted, p, 1 - p)
        return conf, (predicted == (target == 1)).to(p.dtype)
    if preds.device.type != "cpu":  # max with indices is fast on accelerators and needs no host sync
        top, pred = preds.max(-1)
        conf = torch.exp(top - torch.logsumexp(preds, -1)) if input == "logits" else top
        return conf, (pred == target).to(conf.dtype)
    top = preds.amax(-1)
    conf = torch.exp(top - torch.logsumexp(preds, -1)) if input == "logits" else top
    return conf, top_label_hits(preds, target, top, conf).to(conf.dtype)


def top_label_hits(scores: torch.Tensor, target: torch.Tensor, top: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Whether ``target`` is each row's predicted class (the first maximal one, as ``scores.max(-1)``).

    On CPU, ``max``/``argmax`` with indices are about ten times slower than ``amax`` plus a
    ``gather``, so a row is taken as a hit when the target's score equals the row maximum ``top``.
    That differs from the first-maximum rule only when the maximum is tied, and a tie needs two
    classes at probability ``conf``, hence ``conf <= 1/2``: those few rows are settled with
    ``argmax`` (one host synchronisation). With ``input="probs"`` this assumes rows that sum to
    one, which ``validate_args`` checks.
    """
    hits = scores.gather(-1, target.unsqueeze(-1)).squeeze(-1) == top
    maybe_tied = hits & (conf <= 0.5 + PROB_SUM_TOLERANCE)
    if bool(maybe_tied.any()):
        rows = maybe_tied.nonzero().squeeze(1)
        hits[rows] = scores[rows].argmax(-1) == target[rows]
    return hits


def class_probabilities(preds: torch.Tensor, input: str = "logits") -> torch.Tensor:
    """(N, C) probabilities; binary (N,) preds become the two columns [1 - p, p]."""
    if preds.dim() == 1:
        p = torch.sigmoid(preds) if input == "logits" else preds
        return torch.stack([1 - p, p], -1)
    return preds.softmax(-1) if input == "logits" else preds


# --------------------------------------------------------------------------------------------
# binning: per-bin sums (count, confidence, correct) in float64, shape (..., 3, n_bins)
# --------------------------------------------------------------------------------------------


def uniform_bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-width bin ``floor(conf * n_bins)``, with 1.0 in the last bin and 0.0 in the first."""
    return (conf * n_bins).long().clamp_(0, n_bins - 1)


def bin_sums(index: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per-bin (count, sum of confidence, sum of correct) of shape (3, n_bins) or (C, 3, n_bins).

    ``index``, ``conf`` and ``correct`` are (N,) for top-label statistics or (N, C) for per-class
    (one-vs-rest) statistics; one ``index_add_`` whatever the shape.
    """
    src = torch.stack([torch.ones_like(conf), conf, correct]).to(torch.float64)  # (3, N[, C])
    if index.dim() == 1:
        out = torch.zeros(3, n_bins, dtype=torch.float64, device=conf.device)
        return out.index_add_(1, index, src)
    num_classes = index.shape[1]
    flat = (index + torch.arange(num_classes, device=index.device) * n_bins).reshape(-1)
    out = torch.zeros(3, num_classes * n_bins, dtype=torch.float64, device=conf.device)
    out.index_add_(1, flat, src.reshape(3, -1))
    return out.view(3, num_classes, n_bins).transpose(0, 1).contiguous()


def quantile_bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Exact equal-mass bins along dim 0 of ``conf`` (N,) or (N, C).

    The sorted values are split into ``min(n_bins, N)`` groups of sizes differing by at most one
    (larger groups first, like ``numpy.array_split``); the edges are the midpoints between
    neighbouring groups and a value equal to an edge goes to the lower bin. This is the scheme of
    verified_calibration's ``get_equal_bins``.
    """
    n = conf.shape[0]
    k = max(1, min(n_bins, n))
    columns = conf.unsqueeze(1) if conf.dim() == 1 else conf
    ordered = columns.sort(0).values  # (N, C)
    q, m = divmod(n, k)
    sizes = torch.full((k,), q, dtype=torch.long, device=conf.device)
    sizes[:m] += 1
    ends = sizes.cumsum(0)[:-1]  # first index of groups 1..k-1
    edges = (ordered[ends - 1] + ordered[ends]) / 2  # (k-1, C)
    index = torch.searchsorted(edges.T.contiguous(), columns.T.contiguous(), right=False).T
    return index[:, 0] if conf.dim() == 1 else index


def merge_fine_bins(fine: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Group fine equal-width bins (..., 3, G) into ``n_bins`` equal-mass bins (..., 3, n_bins).

    A fine bin goes, whole, to the equal-mass group that holds its middle sample in sorted order,
    so each group edge is off by at most the samples of one fine bin: the streaming
    approximation of :func:`quantile_bin_index`.
    """
    count = fine[..., 0, :]
    total = count.sum(-1, keepdim=True)  # (..., 1)
    before = count.cumsum(-1) - count
    rank = (before + ((count - 1) / 2).clamp_min(0)).floor()
    k = total.clamp(1, n_bins)
    q = torch.div(total, k, rounding_mode="floor").clamp_min(1)
    m = total - q * k
    big = m * (q + 1)
    group = torch.where(rank < big, rank / (q + 1), m + (rank - big) / q).floor().long().clamp_(0, n_bins - 1)
    out = torch.zeros(*fine.shape[:-1], n_bins, dtype=fine.dtype, device=fine.device)
    return out.scatter_add_(-1, group.unsqueeze(-2).expand_as(fine), fine)


# --------------------------------------------------------------------------------------------
# reductions from per-bin sums
# --------------------------------------------------------------------------------------------


def _bin_means(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    count, conf_sum, correct_sum = stats.unbind(-2)
    safe = count.clamp_min(1)
    weight = count / count.sum(-1, keepdim=True).clamp_min(1)
    return count, weight, conf_sum / safe, correct_sum / safe


def nan_if_empty(value: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``value``, or nan where the per-bin sums (..., 3, n_bins) hold no sample at all (no host sync)."""
    seen = stats[..., 0, :].sum() > 0
    return torch.where(seen, value, torch.full_like(value, math.nan))


def calibration_error_from_bins(stats: torch.Tensor, norm: str = "l1", debias: bool = False, kind: str = "top_label"):
    """Calibration error from per-bin sums (..., 3, n_bins); see :func:`calibration_error`. nan when empty."""
    return nan_if_empty(_calibration_error_from_bins(stats, norm, debias, kind), stats)


def _calibration_error_from_bins(stats: torch.Tensor, norm: str, debias: bool, kind: str) -> torch.Tensor:
    count, weight, conf, acc = _bin_means(stats)
    gap = conf - acc  # zero in empty bins
    if norm == "l1":
        per = (weight * gap.abs()).sum(-1)
        return per.mean() if per.dim() else per
    if norm == "max":
        per = gap.abs().amax(-1)
        if kind == "marginal":
            return per.amax()
        return per.mean() if per.dim() else per
    if debias:
        variance = torch.where(count >= 2, acc * (1 - acc) / (count - 1).clamp_min(1), torch.zeros_like(acc))
        bias_ok = torch.where(count >= 2, gap.square() - variance, torch.zeros_like(acc))
        squared = (weight * bias_ok).sum(-1).clamp_min(0)
    else:
        squared = (weight * gap.square()).sum(-1)
    if kind == "marginal":
        return squared.mean().sqrt()
    per = squared.sqrt()
    return per.mean() if per.dim() else per


def confidence_error_from_bins(stats: torch.Tensor, over: bool, confidence_weighted: bool = False) -> torch.Tensor:
    """Over- (conf > acc) or under-confidence (acc > conf) part of the l1 ECE from per-bin sums; nan when empty."""
    _, weight, conf, acc = _bin_means(stats)
    part = (conf - acc).clamp_min(0) if over else (acc - conf).clamp_min(0)
    if confidence_weighted:
        part = part * conf
    return nan_if_empty((weight * part).sum(-1), stats)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


def _binned_stats(
    preds: torch.Tensor, target: torch.Tensor, n_bins: int, binning: str, kind: str, input: str, binary: str
) -> torch.Tensor:
    with clear_label_errors(target, num_classes_of(preds)):
        if kind == "top_label":
            conf, correct = top_label_confidence(preds, target, input, binary)
        else:
            conf = class_probabilities(preds, input)
            correct = F.one_hot(target, conf.shape[1]).to(conf.dtype)
    index = uniform_bin_index(conf, n_bins) if binning == "uniform" else quantile_bin_index(conf, n_bins)
    return bin_sums(index, conf, correct, n_bins)


def calibration_error(
    preds: torch.Tensor,
    target: torch.Tensor,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
    kind: str = "top_label",
    debias: bool = False,
    input: str = "logits",
    binary: str = "top_label",
    validate_args: bool = True,
) -> torch.Tensor:
    """Binned calibration error: ECE (``l1``), RMSCE (``l2``) or MCE (``max``).

    With bins b holding a fraction w_b of the samples, mean confidence conf_b and accuracy acc_b:
    ``l1 = sum_b w_b |acc_b - conf_b|``, ``l2 = sqrt(sum_b w_b (acc_b - conf_b)^2)`` and
    ``max = max_b |acc_b - conf_b|`` over non-empty bins.

    Args:
        preds: (N, C) logits or probabilities, or (N,) positive-class logits/probabilities.
        target: (N,) integer labels.
        n_bins: number of bins (15 is the usual reporting default).
        norm: ``"l1"``, ``"l2"`` or ``"max"``.
        binning: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass, exact here; AdaECE with l1).
        kind: ``"top_label"`` (confidence of the predicted class), ``"classwise"`` (one-vs-rest
            error of every class, averaged: classwise ECE) or ``"marginal"`` (Kumar et al.: the
            l_p mean over classes, ``(mean_c CE_c^p)^(1/p)``, max over classes for ``max``; equal
            to classwise for ``l1``).
        debias: the debiased l2 estimator of Kumar et al. (2019): each bin with n_b >= 2 samples
            contributes ``w_b ((acc_b - conf_b)^2 - acc_b (1 - acc_b) / (n_b - 1))``, the total is
            clipped at zero before the square root. Needs ``norm="l2"``.
        input: ``"logits"`` or ``"probs"``; probabilities must sum to one along dim 1 (within 1e-3).
        binary: semantics of 1-D preds, ``"top_label"`` or ``"positive"`` (module docstring).
        validate_args: check label range and probability sums (one host synchronisation).
    """
    check_calibration_args(n_bins, norm, binning, kind, debias, input, binary)
    preds, target = prepare_inputs(preds, target, input, validate_args)
    _warn_if_empty(preds, "calibration_error")
    stats = _binned_stats(preds, target, n_bins, binning, kind, input, binary)
    return calibration_error_from_bins(stats, norm, debias, kind).to(preds.dtype)


def _confidence_error(preds, target, n_bins, binning, input, binary, confidence_weighted, validate_args, over):
    check_calibration_args(n_bins, "l1", binning, "top_label", False, input, binary)
    preds, target = prepare_inputs(preds, target, input, validate_args)
    _warn_if_empty(preds, "overconfidence_error" if over else "underconfidence_error")
    stats = _binned_stats(preds, target, n_bins, binning, "top_label", input, binary)
    return confidence_error_from_bins(stats, over, confidence_weighted).to(preds.dtype)


def overconfidence_error(
    preds: torch.Tensor,
    target: torch.Tensor,
    n_bins: int = 15,
    binning: str = "uniform",
    input: str = "logits",
    binary: str = "top_label",
    confidence_weighted: bool = False,
    validate_args: bool = True,
) -> torch.Tensor:
    """Over-confidence error: the part of the top-label ECE where confidence exceeds accuracy.

    ``sum_b w_b max(conf_b - acc_b, 0)``, so over- plus under-confidence error is the ECE.
    ``confidence_weighted=True`` gives Thulasidasan et al.'s (2019) OE, ``sum_b w_b conf_b
    max(conf_b - acc_b, 0)``. Other arguments as in :func:`calibration_error`.
    """
    return _confidence_error(preds, target, n_bins, binning, input, binary, confidence_weighted, validate_args, True)


def underconfidence_error(
    preds: torch.Tensor,
    target: torch.Tensor,
    n_bins: int = 15,
    binning: str = "uniform",
    input: str = "logits",
    binary: str = "top_label",
    confidence_weighted: bool = False,
    validate_args: bool = True,
) -> torch.Tensor:
    """Under-confidence error: ``sum_b w_b max(acc_b - conf_b, 0)`` (the rest of the ECE).

    ``confidence_weighted=True`` multiplies each bin by conf_b, mirroring Thulasidasan et al.'s OE.
    """
    return _confidence_error(preds, target, n_bins, binning, input, binary, confidence_weighted, validate_args, False)


def reliability_diagram(
    preds: torch.Tensor,
    target: torch.Tensor,
    n_bins: int = 15,
    input: str = "logits",
    binary: str = "top_label",
    validate_args: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-bin data of a top-label reliability diagram with equal-width bins.

    Returns a dict of ``bin_edges`` (n_bins + 1,), ``confidence`` and ``accuracy`` (mean per bin,
    0 in empty bins), ``count`` (n_bins,) and ``ece`` (the l1 error of the same bins).
    Plot it with :func:`lightning_mix.metrics.plot_reliability_diagram`.
    """
    check_calibration_args(n_bins, input=input, binary=binary)
    preds, target = prepare_inputs(preds, target, input, validate_args)
    _warn_if_empty(preds, "reliability_diagram")
    return reliability_from_bins(_binned_stats(preds, target, n_bins, "uniform", "top_label", input, binary))


def reliability_from_bins(stats: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reliability-diagram dict from top-label per-bin sums (3, n_bins)."""
    count, _, conf, acc = _bin_means(stats)
    n_bins = stats.shape[-1]
    return {
        "bin_edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=stats.device),
        "confidence": conf,
        "accuracy": acc,
        "count": count,
        "ece": calibration_error_from_bins(stats, "l1"),
    }


def brier_score(
    preds: torch.Tensor, target: torch.Tensor, input: str = "logits", validate_args: bool = True
) -> torch.Tensor:
    """Mean over samples of ``sum_c (p_c - y_c)^2`` (Brier 1950; 0 is perfect, 2 the worst).

    ``target`` may be (N,) labels or dense (N, C) class probabilities. Binary (N,) preds give the
    usual binary score ``mean (p - y)^2`` (scikit-learn's ``brier_score_loss``), half the
    two-class sum.
    """
    total, count = brier_sums(preds, target, input, validate_args)
    _warn_if_empty(preds, "brier_score")
    return (total / count).to(preds.dtype if preds.is_floating_point() else torch.float32)


def _dense_or_labels(preds: torch.Tensor, target: torch.Tensor, input: str, validate_args: bool):
    if target.is_floating_point() and target.shape == preds.shape and preds.dim() == 2:
        _check_choice("input", input, _INPUTS)
        preds = preds if preds.dtype in (torch.float32, torch.float64) else preds.float()
        row_sums = preds.sum(-1)
        if validate_args and not bool(torch.isfinite(row_sums).all()) and not bool(torch.isfinite(preds).all()):
            raise non_finite_error(preds, "preds")
        if validate_args and input == "probs" and bool((row_sums - 1).abs().amax() > PROB_SUM_TOLERANCE):
            raise ValueError("input='probs' but rows of preds do not sum to one; pass input='logits' or normalise.")
        return preds, target.to(preds.dtype)
    preds, target = prepare_inputs(preds, target, input, validate_args)
    return preds, None


def brier_sums(preds, target, input="logits", validate_args=True) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-sample Brier scores, number of samples), both float64: the additive state."""
    preds, dense = _dense_or_labels(preds, target, input, validate_args)
    if dense is None and preds.dim() == 1:
        p = torch.sigmoid(preds) if input == "logits" else preds
        per = (p - target.to(p.dtype)).square()
    else:
        probs = class_probabilities(preds, input)
        if dense is None:
            # sum_c p_c^2 - 2 p_y + 1, without materialising the one-hot targets
            with clear_label_errors(target, num_classes_of(preds)):
                per = probs.square().sum(-1) - 2 * probs.gather(1, target.view(-1, 1)).squeeze(1) + 1
        else:
            per = (probs - dense).square().sum(-1)
    return per.sum(dtype=torch.float64), torch.tensor(float(per.numel()), dtype=torch.float64, device=per.device)


def negative_log_likelihood(
    preds: torch.Tensor, target: torch.Tensor, input: str = "logits", validate_args: bool = True
) -> torch.Tensor:
    """Mean negative log-likelihood of the labels (cross-entropy; natural log).

    ``target`` may be (N,) labels or dense (N, C) class probabilities (then ``-sum_c y_c log p_c``).
    With ``input="probs"`` probabilities are clamped at 1e-12 before the log, so one confident
    mistake costs at most 27.6 nats instead of making the mean infinite. Binary (N,) preds give the
    binary cross-entropy.
    """
    total, count = nll_sums(preds, target, input, validate_args)
    _warn_if_empty(preds, "negative_log_likelihood")
    return (total / count).to(preds.dtype if preds.is_floating_point() else torch.float32)


def nll_sums(preds, target, input="logits", validate_args=True) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-sample NLL, number of samples), both float64: the additive state."""
    preds, dense = _dense_or_labels(preds, target, input, validate_args)
    if dense is None and preds.dim() == 1:
        y = target.to(preds.dtype)
        if input == "logits":
            per = F.binary_cross_entropy_with_logits(preds, y, reduction="none")
        else:
            p = preds.clamp(1e-12, 1 - 1e-12)
            per = -(y * p.log() + (1 - y) * (1 - p).log())
    else:
        log_p = preds.log_softmax(-1) if input == "logits" else preds.clamp_min(1e-12).log()
        if dense is None:
            with clear_label_errors(target, num_classes_of(preds)):
                per = -log_p.gather(1, target.view(-1, 1)).squeeze(1)
        else:
            per = -(dense * log_p).sum(-1)
    return per.sum(dtype=torch.float64), torch.tensor(float(per.numel()), dtype=torch.float64, device=per.device)


# --------------------------------------------------------------------------------------------
# smooth ECE (Blasiok and Nakkiran 2024)
# --------------------------------------------------------------------------------------------


def splat_to_grid(x: torch.Tensor, weights: torch.Tensor, nodes: int) -> torch.Tensor:
    """Spread each weight onto the two neighbouring nodes of ``linspace(0, 1, nodes)`` (linear).

    ``x`` (N,) in [0, 1], ``weights`` (K, N) -> (K, nodes), float64.
    """
    scaled = x.to(torch.float64) * (nodes - 1)
    left = scaled.long().clamp_(0, nodes - 2)
    frac = scaled - left
    w = weights.to(torch.float64)
    out = torch.zeros(w.shape[0], nodes, dtype=torch.float64, device=x.device)
    out.index_add_(1, left, w * (1 - frac))
    out.index_add_(1, left + 1, w * frac)
    return out


def _reflected_gaussian_smooth(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """Convolve grid values (K, E) with a Gaussian of width sigma, reflected at 0 and 1 (FFT)."""
    nodes = values.shape[-1]
    t = torch.linspace(0, 1, nodes, dtype=torch.float64, device=values.device)
    kernel = torch.exp(-(t - 0.5).square() / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    extended = torch.cat([values.flip(-1)[..., :-1], values, values.flip(-1)[..., 1:]], -1)  # 3E - 2
    size = extended.shape[-1] + nodes - 1
    full = torch.fft.irfft(torch.fft.rfft(extended, size) * torch.fft.rfft(kernel, size), size)
    start = nodes - 1 + nodes // 2  # 'valid' part starts at E - 1; keep E values from E // 2 on
    return full[..., start : start + nodes]


def _interpolate(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    nodes = grid.shape[-1]
    left = (t * (nodes - 1)).long().clamp_(0, nodes - 2)
    frac = t * (nodes - 1) - left
    return grid[..., left] * (1 - frac) + grid[..., left + 1] * frac


def smooth_ece_at(points: torch.Tensor, weights: torch.Tensor, sigma: float) -> float:
    """SmECE at bandwidth ``sigma`` of weighted points: ``weights`` rows are (residual, 1).

    Follows the discretisation of relplot (the authors' code): splat on ``max(2000, 20/sigma)//2+1``
    nodes, reflected Gaussian convolution, evaluation on ``max(10/sigma, 200)`` points.
    """
    nodes = max(2000, round(20 / sigma)) // 2 + 1
    smoothed = _reflected_gaussian_smooth(splat_to_grid(points, weights, nodes), sigma)
    t = torch.linspace(0, 1, max(round(10 / sigma), 200), dtype=torch.float64, device=points.device)
    residual, density = _interpolate(t, smoothed).unbind(0)
    density = density + 1e-4
    return float((residual.abs()).sum() / density.sum())  # sum |r/d| d / sum d


def smooth_ece_from_points(points: torch.Tensor, weights: torch.Tensor, eps: float = 1e-3) -> tuple[float, float]:
    """(smECE, bandwidth): the automatic bandwidth is the fixed point sigma = smECE_sigma, found by
    ten bisection steps on (0, 1] as in the paper's reference code.
    """
    if not float(weights[1].sum()) > 0:  # no samples: undefined, never a perfect 0
        return math.nan, math.nan

    def too_small(alpha: float) -> bool:
        return alpha < eps or alpha < smooth_ece_at(points, weights, alpha)

    if too_small(1.0):
        sigma = 1.0
    else:
        sigma, end = 1.0, 0.0
        for _ in range(10):
            mid = (sigma + end) / 2
            if too_small(mid):
                end = mid
            else:
                sigma = mid
    return smooth_ece_at(points, weights, sigma), sigma


def smooth_ece(
    preds: torch.Tensor,
    target: torch.Tensor,
    input: str = "logits",
    binary: str = "top_label",
    eps: float = 1e-3,
    return_bandwidth: bool = False,
    validate_args: bool = True,
):
    """Smooth ECE (Blasiok and Nakkiran 2024) of the top-label confidence.

    Kernel-smoothed residuals ``r(t) = sum_i K(t, f_i)(f_i - y_i) / sum_i K(t, f_i)`` with a Gaussian
    kernel reflected at 0 and 1, integrated against the smoothed density of the confidences; the
    bandwidth is chosen automatically as the fixed point sigma = smECE_sigma. Unlike binned ECE it
    is consistent and does not jump when a sample crosses a bin edge. Returns a float64 scalar
    tensor (and the bandwidth, a float, with ``return_bandwidth=True``); equals ``relplot.smECE``
    on the same (f, y).
    """
    _check_choice("binary", binary, _BINARY)
    preds, target = prepare_inputs(preds, target, input, validate_args)
    _warn_if_empty(preds, "smooth_ece")
    with clear_label_errors(target, num_classes_of(preds)):
        conf, correct = top_label_confidence(preds, target, input, binary)
    conf = conf.to(torch.float64)
    weights = torch.stack([conf - correct.to(torch.float64), torch.ones_like(conf)])
    value, sigma = smooth_ece_from_points(conf, weights, eps)
    value = torch.tensor(value, dtype=torch.float64, device=conf.device)
    return (value, sigma) if return_bandwidth else value
