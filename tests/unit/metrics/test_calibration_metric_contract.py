"""Every calibration metric through one tester (class over chunks == functional == reference), plus the
contract for bad input: out-of-range labels, non-finite predictions, empty data, differentiability."""

from __future__ import annotations

import math

import calibration as vc
import numpy as np
import pytest
import relplot
import torch
from _metric_tester import check_differentiability, check_metric
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)

from lightning_mix.metrics import (
    BrierScore,
    CalibrationError,
    NegativeLogLikelihood,
    OverconfidenceError,
    ReliabilityDiagram,
    SmoothECE,
    UnderconfidenceError,
    brier_score,
    calibration_error,
    fit_temperature,
    negative_log_likelihood,
    overconfidence_error,
    reliability_diagram,
    smooth_ece,
    underconfidence_error,
)

C = 6


def _data(n=1500, c=C, scale=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z * scale, y


def _numpy_bins(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15):
    """Hand-written top-label equal-width bins in numpy: (weight, conf, acc, count) per bin."""
    p, labels = probs.numpy(), y.numpy()
    conf = p.max(1)
    correct = (p.argmax(1) == labels).astype(float)
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    safe = np.maximum(count, 1)
    mean_conf = np.bincount(idx, conf, n_bins) / safe
    mean_acc = np.bincount(idx, correct, n_bins) / safe
    return count / count.sum(), mean_conf, mean_acc, count


def _numpy_confidence_error(probs, y, over):
    w, conf, acc, _ = _numpy_bins(probs, y)
    return float((w * np.clip(conf - acc if over else acc - conf, 0, None)).sum())


def _numpy_reliability(probs, y):
    w, conf, acc, count = _numpy_bins(probs, y)
    return {
        "bin_edges": torch.linspace(0, 1, 16, dtype=torch.float64),
        "confidence": torch.from_numpy(conf),
        "accuracy": torch.from_numpy(acc),
        "count": torch.from_numpy(count),
        "ece": torch.tensor(float((w * np.abs(conf - acc)).sum())),
    }


def _classwise_reference(probs, y, norm):
    per = [binary_calibration_error(probs[:, k], (y == k).long(), n_bins=15, norm=norm) for k in range(C)]
    return torch.stack(per).mean()


def _cases():
    """(id, metric factory, functional, reference(probs, y), stream tolerance)."""
    vc_top = {"num_bins": 15, "binning_scheme": vc.utils.get_equal_prob_bins, "mode": "top-label"}
    return [
        *[
            (
                f"ece-{norm}",
                lambda norm=norm: CalibrationError(15, norm),
                lambda z, y, norm=norm: calibration_error(z, y, 15, norm),
                lambda p, y, norm=norm: multiclass_calibration_error(p, y, C, n_bins=15, norm=norm),
                None,
            )
            for norm in ("l1", "l2", "max")
        ],
        (
            "adaece",
            lambda: CalibrationError(15, binning="quantile"),
            lambda z, y: calibration_error(z, y, 15, binning="quantile"),
            lambda p, y: vc.get_ece_em(p.numpy(), y.numpy(), num_bins=15),
            2e-3,
        ),
        (
            "debiased-rmsce",
            lambda: CalibrationError(15, "l2", debias=True),
            lambda z, y: calibration_error(z, y, 15, "l2", debias=True),
            lambda p, y: vc.lower_bound_scaling_ce(p.numpy(), y.numpy(), p=2, debias=True, **vc_top),
            None,
        ),
        *[
            (
                f"classwise-{norm}",
                lambda norm=norm: CalibrationError(15, norm, kind="classwise", num_classes=C),
                lambda z, y, norm=norm: calibration_error(z, y, 15, norm, kind="classwise"),
                lambda p, y, norm=norm: _classwise_reference(p, y, norm),
                None,
            )
            for norm in ("l1", "l2")
        ],
        (
            "marginal-debiased",
            lambda: CalibrationError(15, "l2", binning="quantile", kind="marginal", debias=True, num_classes=C),
            lambda z, y: calibration_error(z, y, 15, "l2", binning="quantile", kind="marginal", debias=True),
            lambda p, y: vc.get_calibration_error(p.numpy(), y.numpy()),
            3e-3,
        ),
        (
            "overconfidence",
            lambda: OverconfidenceError(15),
            lambda z, y: overconfidence_error(z, y, 15),
            lambda p, y: _numpy_confidence_error(p, y, True),
            None,
        ),
        (
            "underconfidence",
            lambda: UnderconfidenceError(15),
            lambda z, y: underconfidence_error(z, y, 15),
            lambda p, y: _numpy_confidence_error(p, y, False),
            None,
        ),
        (
            "reliability",
            lambda: ReliabilityDiagram(15),
            lambda z, y: reliability_diagram(z, y, 15),
            _numpy_reliability,
            None,
        ),
        (
            "smece",
            lambda: SmoothECE(),
            lambda z, y: smooth_ece(z, y),
            lambda p, y: relplot.smECE(*relplot.multiclass_logits_to_confidences(p.numpy(), y.numpy(), probs=True)),
            1e-5,
        ),
        (
            "brier",
            lambda: BrierScore(),
            lambda z, y: brier_score(z, y),
            lambda p, y: ((p - torch.nn.functional.one_hot(y, C)) ** 2).sum(-1).mean(),
            None,
        ),
        (
            "nll",
            lambda: NegativeLogLikelihood(),
            lambda z, y: negative_log_likelihood(z, y),
            lambda p, y: log_loss(y.numpy(), p.numpy(), labels=list(range(C))),
            None,
        ),
    ]


CASES = _cases()
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_class_over_chunks_equals_functional_equals_reference(case):
    _, make, functional, reference, stream_atol = case
    logits, y = _data()
    check_metric(make, functional, logits, y, reference(logits.softmax(-1), y), stream_atol=stream_atol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_output_does_not_require_grad(case):
    # issue 12 item 3: torchmetrics' differentiability check (is_differentiable=False, yet forward kept the graph)
    logits, y = _data(n=64)
    metric = case[1]()
    assert metric.is_differentiable is False
    check_differentiability(case[1], logits.float(), y)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_out_of_range_label_is_a_clear_error_in_class_and_functional(case):
    _, make, functional, _, _ = case
    logits, y = _data(n=40)
    bad = y.clone()
    bad[3] = C  # one label past the last class
    with pytest.raises(ValueError, match=rf"outside \[0, {C}\)"):
        functional(logits, bad)
    with pytest.raises(ValueError, match=rf"outside \[0, {C}\)"):
        make().update(logits, bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: NegativeLogLikelihood(validate_args=False),
        lambda: BrierScore(validate_args=False),
        lambda: CalibrationError(validate_args=False),
        lambda: SmoothECE(validate_args=False),
        lambda: CalibrationError(kind="classwise", num_classes=C, validate_args=False),
    ],
    ids=["nll", "brier", "ece", "smece", "classwise"],
)
def test_out_of_range_label_without_validation_still_names_the_problem(make):
    logits, y = _data(n=40)
    bad = y.clone()
    bad[0] = C + 2
    with pytest.raises(ValueError, match=rf"outside \[0, {C}\).*max {C + 2}"):
        make().update(logits, bad)
    with pytest.raises(ValueError, match="outside"):
        negative_log_likelihood(logits, bad, validate_args=False)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_non_finite_preds_are_a_clear_error(case, bad_value):
    _, make, functional, _, _ = case
    logits, y = _data(n=40)
    logits[5, 2] = bad_value
    with pytest.raises(ValueError, match="non-finite values .* in 1 of 40 samples"):
        functional(logits, y)
    with pytest.raises(ValueError, match="non-finite"):
        make().update(logits, y)


def test_non_finite_preds_without_validation_give_nan():
    logits, y = _data(n=40)
    logits[5] = math.nan
    assert math.isnan(float(calibration_error(logits, y, validate_args=False)))
    assert math.isnan(float(negative_log_likelihood(logits, y, validate_args=False)))
    metric = CalibrationError(validate_args=False)
    metric.update(logits, y)
    assert math.isnan(float(metric.compute()))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compute_after_only_empty_updates_is_nan_with_a_warning(case):
    _, make, functional, _, _ = case
    logits, y = _data(n=4)
    metric = make()
    metric.update(logits[:0], y[:0])
    metric.update(logits[:0], y[:0])
    with pytest.warns(UserWarning, match="no samples were seen"):
        out = metric.compute()
    value = out["ece"] if isinstance(out, dict) else out
    assert math.isnan(float(value))  # never 0.0, which reads as "perfectly calibrated"
    with pytest.warns(UserWarning, match="no samples were seen"):
        out = functional(logits[:0], y[:0])
    assert math.isnan(float(out["ece"] if isinstance(out, dict) else out))


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_fit_temperature_refuses_non_finite_logits(bad_value):
    logits, y = _data(n=200)
    logits[17, 0] = bad_value
    with pytest.raises(ValueError, match="non-finite values .* in 1 of 200 rows"):
        fit_temperature(logits, y)


def test_fit_temperature_refuses_out_of_range_labels():
    logits, y = _data(n=50)
    y[0] = C
    with pytest.raises(ValueError, match=rf"outside \[0, {C}\)"):
        fit_temperature(logits, y)


def test_finite_logits_whose_row_sum_overflows_are_not_called_non_finite():
    logits = torch.tensor([[3e38, 3e38, 0.0], [0.0, 1.0, 2.0]])  # finite entries, the first row sums to inf
    target = torch.tensor([0, 2])
    assert float(calibration_error(logits, target, n_bins=2)) >= 0
    CalibrationError(n_bins=2).update(logits, target)
