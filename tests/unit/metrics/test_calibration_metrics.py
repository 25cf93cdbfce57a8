"""Calibration metrics against torchmetrics, uncertainty-calibration, relplot and hand-worked numbers."""

from __future__ import annotations

import math

import calibration as vc
import pytest
import relplot
import torch
from sklearn.metrics import brier_score_loss, log_loss
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
    negative_log_likelihood,
    overconfidence_error,
    reliability_diagram,
    smooth_ece,
    underconfidence_error,
)


def _data(n=3000, c=10, scale=1.5, seed=0, dtype=torch.float64):
    """Labels drawn from softmax(z), predictions softmax(scale * z): miscalibrated but informative."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=dtype) * 2
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z * scale, y


# ------------------------------------------------------------------------------- references


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_equal_width_matches_torchmetrics(norm, scale):
    logits, y = _data(scale=scale)
    probs = logits.softmax(-1)
    expected = multiclass_calibration_error(probs, y, 10, n_bins=15, norm=norm)
    assert float(calibration_error(probs, y, 15, norm, input="probs")) == pytest.approx(float(expected), abs=1e-6)
    assert float(calibration_error(logits, y, 15, norm, input="logits")) == pytest.approx(float(expected), abs=1e-6)
    metric = CalibrationError(15, norm, input="logits")
    for chunk_z, chunk_y in zip(logits.split(700), y.split(700)):
        metric.update(chunk_z, chunk_y)
    assert float(metric.compute()) == pytest.approx(float(expected), abs=1e-6)


def test_binary_positive_semantics_match_torchmetrics():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(2000, generator=g, dtype=torch.float64)
    y = (torch.rand(2000, generator=g, dtype=torch.float64) < p**1.5).long()
    for norm in ("l1", "l2", "max"):
        expected = binary_calibration_error(p, y, n_bins=10, norm=norm)
        got = calibration_error(p, y, 10, norm, input="probs", binary="positive")
        assert float(got) == pytest.approx(float(expected), abs=1e-6)


def test_binary_top_label_equals_two_column_multiclass():
    g = torch.Generator().manual_seed(2)
    logit = torch.randn(1500, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(1500, generator=g, dtype=torch.float64) < torch.sigmoid(logit)).long()
    two = torch.stack([torch.zeros_like(logit), logit], -1)  # softmax([0, z]) = [1 - s, s]
    assert float(calibration_error(logit, y, 15)) == pytest.approx(float(calibration_error(two, y, 15)), abs=1e-9)
    expected = multiclass_calibration_error(two.softmax(-1), y, 2, n_bins=15)
    assert float(calibration_error(logit, y, 15)) == pytest.approx(float(expected), abs=1e-6)


def test_debiased_top_label_matches_uncertainty_calibration():
    logits, y = _data()
    probs = logits.softmax(-1)
    p, labels = probs.numpy(), y.numpy()
    for binning, scheme in (("uniform", vc.utils.get_equal_prob_bins), ("quantile", vc.utils.get_equal_bins)):
        expected = vc.lower_bound_scaling_ce(
            p, labels, p=2, debias=True, num_bins=15, binning_scheme=scheme, mode="top-label"
        )
        got = calibration_error(probs, y, 15, "l2", binning=binning, debias=True, input="probs")
        assert float(got) == pytest.approx(expected, rel=1e-9)


def test_marginal_debiased_matches_get_calibration_error():
    logits, y = _data(scale=1.3)
    probs = logits.softmax(-1)
    expected = vc.get_calibration_error(probs.numpy(), y.numpy())  # l2, debiased, marginal, 15 equal-mass bins
    got = calibration_error(probs, y, 15, "l2", binning="quantile", kind="marginal", debias=True, input="probs")
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # the streaming metric (equal-mass bins on a fine grid) is close to the exact value
    metric = CalibrationError(15, "l2", binning="quantile", kind="marginal", debias=True, num_classes=10, input="probs")
    metric.update(probs[:1000], y[:1000])
    metric.update(probs[1000:], y[1000:])
    assert float(metric.compute()) == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("norm,p", [("l1", 1), ("l2", 2)])
def test_marginal_and_classwise_match_uncertainty_calibration(norm, p):
    logits, y = _data(scale=0.7, seed=3)
    probs = logits.softmax(-1)
    expected = vc.lower_bound_scaling_ce(
        probs.numpy(),
        y.numpy(),
        p=p,
        debias=False,
        num_bins=15,
        binning_scheme=vc.utils.get_equal_prob_bins,
        mode="marginal",
    )
    got = calibration_error(probs, y, 15, norm, kind="marginal", input="probs")
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # classwise = per-class error averaged: equal to marginal for l1, mean of per-class roots for l2
    # one-vs-rest of class k measures p_k against [y == k]: use the positive-class semantics
    per_class = [
        calibration_error(probs[:, k], (y == k).long(), 15, norm, input="probs", binary="positive") for k in range(10)
    ]
    got_cw = calibration_error(probs, y, 15, norm, kind="classwise", input="probs")
    assert float(got_cw) == pytest.approx(float(torch.stack(per_class).mean()), rel=1e-9)
    metric = CalibrationError(15, norm, kind="classwise", num_classes=10, input="probs")
    metric.update(probs, y)
    assert float(metric.compute()) == pytest.approx(float(got_cw), rel=1e-6)


def test_quantile_top_label_l1_matches_get_ece_em_and_grid_approximation():
    logits, y = _data(n=5000, scale=1.5, seed=4)
    probs = logits.softmax(-1)
    expected = vc.get_ece_em(probs.numpy(), y.numpy(), num_bins=15)
    exact = calibration_error(probs, y, 15, binning="quantile", input="probs")
    assert float(exact) == pytest.approx(expected, rel=1e-9)
    errors = []
    for grid in (100, 1000, 100_000):
        metric = CalibrationError(15, binning="quantile", input="probs", grid_size=grid)
        metric.update(probs, y)
        errors.append(abs(float(metric.compute()) - expected))
    assert errors[1] < 1e-3 and errors[2] < 1e-4  # the approximation shrinks with the grid
    assert errors[2] <= errors[0]


def test_smooth_ece_matches_relplot():
    for scale, seed in ((1.0, 5), (1.6, 6), (0.6, 7)):
        logits, y = _data(n=2000, scale=scale, seed=seed)
        probs = logits.softmax(-1)
        f, correct = relplot.multiclass_logits_to_confidences(probs.numpy(), y.numpy(), probs=True)
        expected, width = relplot.smECE(f, correct, return_width=True)
        got, sigma = smooth_ece(probs, y, input="probs", return_bandwidth=True)
        assert sigma == pytest.approx(width)
        assert float(got) == pytest.approx(expected, rel=1e-7)
        metric = SmoothECE(input="logits")
        metric.update(logits[:1200], y[:1200])
        metric.update(logits[1200:], y[1200:])
        assert float(metric.compute()) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_smooth_ece_binary_positive_matches_relplot():
    g = torch.Generator().manual_seed(8)
    p = torch.rand(1000, generator=g, dtype=torch.float64)
    y = (torch.rand(1000, generator=g, dtype=torch.float64) < p**2).long()
    expected = relplot.smECE(p.numpy(), y.numpy().astype(float))
    assert float(smooth_ece(p, y, input="probs", binary="positive")) == pytest.approx(expected, rel=1e-7)


def test_brier_and_nll_match_sklearn():
    logits, y = _data(n=500, c=4, seed=9)
    probs = logits.softmax(-1)
    onehot = torch.nn.functional.one_hot(y, 4).double()
    expected_brier = float(((probs - onehot) ** 2).sum(-1).mean())
    assert float(brier_score(logits, y)) == pytest.approx(expected_brier, rel=1e-6)
    assert float(brier_score(probs, onehot, input="probs")) == pytest.approx(expected_brier, rel=1e-6)
    assert float(negative_log_likelihood(logits, y)) == pytest.approx(log_loss(y.numpy(), probs.numpy()), rel=1e-6)
    metric_b, metric_n = BrierScore(), NegativeLogLikelihood(input="probs")
    for part_z, part_y in zip(logits.split(128), y.split(128)):
        metric_b.update(part_z, part_y)
        metric_n.update(part_z.softmax(-1), part_y)
    assert float(metric_b.compute()) == pytest.approx(expected_brier, rel=1e-6)
    assert float(metric_n.compute()) == pytest.approx(log_loss(y.numpy(), probs.numpy()), rel=1e-6)
    # binary (N,) scores: the usual binary Brier and log loss
    p = probs[:, 0]
    yb = (y == 0).long()
    assert float(brier_score(p, yb, input="probs")) == pytest.approx(brier_score_loss(yb.numpy(), p.numpy()), rel=1e-6)
    assert float(negative_log_likelihood(p, yb, input="probs")) == pytest.approx(
        log_loss(yb.numpy(), p.numpy()), rel=1e-6
    )


# ------------------------------------------------------------------------------- hand-worked


def _hand_probs():
    # top-label confidences 0.9, 0.8, 0.6, 0.3 (4 classes), predictions [0, 1, 2, 0]
    probs = torch.tensor(
        [[0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05], [0.2, 0.1, 0.6, 0.1], [0.3, 0.25, 0.25, 0.2]],
        dtype=torch.float64,
    )
    target = torch.tensor([0, 0, 2, 1])  # correct, wrong, correct, wrong
    return probs, target


def test_hand_worked_binned_errors():
    probs, target = _hand_probs()
    # 2 bins: [0, .5) holds 0.3 (wrong); [.5, 1] holds 0.9 (ok), 0.8 (wrong), 0.6 (ok): conf 2.3/3, acc 2/3
    gap_high = 2.3 / 3 - 2 / 3  # 0.1
    ece = 0.25 * 0.3 + 0.75 * gap_high
    assert float(calibration_error(probs, target, 2, input="probs")) == pytest.approx(ece)
    assert float(calibration_error(probs, target, 2, "max", input="probs")) == pytest.approx(0.3)
    assert float(calibration_error(probs, target, 2, "l2", input="probs")) == pytest.approx(
        math.sqrt(0.25 * 0.09 + 0.75 * gap_high**2)
    )
    # debiased: the one-sample bin contributes 0; the 3-sample bin gap^2 - acc(1-acc)/(n-1) < 0 -> clipped
    debiased_sq = 0.75 * (gap_high**2 - (2 / 3) * (1 / 3) / 2)
    assert debiased_sq < 0
    assert float(calibration_error(probs, target, 2, "l2", debias=True, input="probs")) == 0.0
    # over-confidence: both bins have conf > acc here, so OE = ECE and UE = 0
    assert float(overconfidence_error(probs, target, 2, input="probs")) == pytest.approx(ece)
    assert float(underconfidence_error(probs, target, 2, input="probs")) == 0.0
    assert float(overconfidence_error(probs, target, 2, input="probs", confidence_weighted=True)) == pytest.approx(
        0.25 * 0.3 * 0.3 + 0.75 * (2.3 / 3) * gap_high
    )
    # equal-mass, 2 bins: {0.3, 0.6} (conf .45, acc .5) and {0.8, 0.9} (conf .85, acc .5)
    assert float(calibration_error(probs, target, 2, binning="quantile", input="probs")) == pytest.approx(
        0.5 * 0.05 + 0.5 * 0.35
    )


def test_hand_worked_under_confidence_and_sum():
    # confidences 0.55 and 0.6 (one bin of 2 bins), both correct: acc 1 > conf .575 -> UE .425
    probs = torch.tensor([[0.55, 0.45], [0.4, 0.6]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    assert float(underconfidence_error(probs, target, 2, input="probs")) == pytest.approx(0.425)
    assert float(overconfidence_error(probs, target, 2, input="probs")) == 0.0
    logits, y = _data(seed=11, scale=1.2)
    total = overconfidence_error(logits, y) + underconfidence_error(logits, y)
    assert float(total) == pytest.approx(float(calibration_error(logits, y)), abs=1e-7)
    oe, ue = OverconfidenceError(), UnderconfidenceError()
    oe.update(logits, y)
    ue.update(logits, y)
    assert float(oe.compute() + ue.compute()) == pytest.approx(float(calibration_error(logits, y)), abs=1e-6)


def test_hand_worked_classwise_brier_nll():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    target = torch.tensor([0, 0, 1])
    # 2 bins. class 0: p = .7 (y1) .2 (y1) .6 (y0): bin0 {.2: acc 1} gap .8; bin1 {.7, .6: conf .65 acc .5} gap .15
    #   ECE_0 = 1/3 * .8 + 2/3 * .15 = 0.36667. class 1 is the mirror image: p = .3 (y0) .8 (y0) .4 (y1):
    #   bin0 {.3, .4: conf .35, acc .5} gap .15; bin1 {.8: acc 0} gap .8 -> same 0.36667
    expected = 1 / 3 * 0.8 + 2 / 3 * 0.15
    assert float(calibration_error(probs, target, 2, kind="classwise", input="probs")) == pytest.approx(expected)
    # Brier: (.3^2 + .3^2) + (.8^2 + .8^2) + (.6^2 + .6^2) = .18 + 1.28 + .72 -> mean .72667
    assert float(brier_score(probs, target, input="probs")) == pytest.approx((0.18 + 1.28 + 0.72) / 3)
    assert float(negative_log_likelihood(probs, target, input="probs")) == pytest.approx(
        -(math.log(0.7) + math.log(0.2) + math.log(0.4)) / 3
    )


def test_hand_worked_smooth_ece_perfectly_calibrated_is_small_and_constant_shift_is_found():
    # f = 0.7 everywhere with 70% positives: calibrated, smECE ~ 0; with 40% positives it is ~0.3
    f = torch.full((1000,), 0.7, dtype=torch.float64)
    y_cal = (torch.arange(1000) % 10 < 7).long()
    y_off = (torch.arange(1000) % 10 < 4).long()
    assert float(smooth_ece(f, y_cal, input="probs", binary="positive")) < 1e-3
    assert float(smooth_ece(f, y_off, input="probs", binary="positive")) == pytest.approx(0.3, abs=0.01)


def test_confidence_one_lands_in_last_bin_zero_in_first():
    # one-hot probabilities: confidence exactly 1.0. 3 correct, 1 wrong -> last bin conf 1, acc .75
    probs = torch.eye(4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    assert float(calibration_error(probs, target, 15, input="probs")) == pytest.approx(0.25)
    diagram = reliability_diagram(probs, target, 15, input="probs")
    assert diagram["count"][-1] == 4 and diagram["count"][:-1].sum() == 0
    # torchmetrics sends 1.0 to a hidden extra bin (issue #3510): its diagram bins would be empty;
    # our binary positive class with p = 0.0 goes to the first bin
    p = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    diagram = reliability_diagram(p, y, 10, input="probs", binary="positive")
    assert diagram["count"][0] == 2 and diagram["count"][-1] == 1
    assert float(calibration_error(p, y, 10, input="probs", binary="positive")) == pytest.approx(2 / 3 * 0.5)


# ------------------------------------------------------------------------------- state and streaming


def test_state_size_does_not_grow_with_samples():
    logits, y = _data(n=4000)
    for metric in (
        CalibrationError(15),
        CalibrationError(15, "l2", kind="classwise", num_classes=10),
        SmoothECE(),
        BrierScore(),
        NegativeLogLikelihood(),
        ReliabilityDiagram(15),
    ):
        metric.update(logits[:100], y[:100])
        sizes = {k: v.numel() for k, v in metric.metric_state.items()}
        for part_z, part_y in zip(logits[100:].split(900), y[100:].split(900)):
            metric.update(part_z, part_y)
        assert {k: v.numel() for k, v in metric.metric_state.items()} == sizes
    assert CalibrationError(15).bins.shape == (3, 15)
    assert CalibrationError(15, kind="classwise", num_classes=10).bins.shape == (10, 3, 15)


def test_reliability_diagram_metric_and_plot(tmp_path):
    logits, y = _data(n=1000)
    metric = ReliabilityDiagram(10)
    metric.update(logits, y)
    out = metric.compute()
    ref = reliability_diagram(logits, y, 10)
    for key in ("confidence", "accuracy", "count", "ece"):
        assert torch.allclose(out[key], ref[key])
    assert float(out["ece"]) == pytest.approx(float(calibration_error(logits, y, 10)), abs=1e-7)
    conf, pred = logits.softmax(-1).max(-1)
    in_bin = (conf >= 0.5) & (conf < 0.6)
    assert float(out["count"][5]) == float(in_bin.sum())
    assert float(out["accuracy"][5]) == pytest.approx(float((pred == y)[in_bin].double().mean()))
    fig, axes = metric.plot()
    fig.savefig(tmp_path / "diagram.png")
    assert (tmp_path / "diagram.png").stat().st_size > 1000 and len(axes) == 2


# ------------------------------------------------------------------------------- errors


def test_errors_are_clear():
    logits, y = _data(n=20)
    with pytest.raises(ValueError, match="sum to one"):
        calibration_error(logits, y, input="probs")
    with pytest.raises(ValueError, match="sum to one"):
        CalibrationError(input="probs").update(logits, y)
    with pytest.raises(ValueError, match="norm='l2'"):
        CalibrationError(debias=True)
    with pytest.raises(ValueError, match="num_classes"):
        CalibrationError(kind="classwise")
    with pytest.raises(ValueError, match="input must be one of"):
        CalibrationError(input="auto")
    with pytest.raises(ValueError, match="outside"):
        calibration_error(logits, y + 10)
    with pytest.raises(ValueError, match="integer class labels"):
        calibration_error(logits, y.double())


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import sys

    from lightning_mix.callbacks.calibration_monitor import CalibrationMonitor

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    logits, y = _data(n=50)
    metric = ReliabilityDiagram()
    metric.update(logits, y)
    with pytest.raises(ImportError, match=r"pip install lightning-mix\[plot\]"):
        metric.plot()
    with pytest.raises(ImportError, match=r"pip install lightning-mix\[plot\]"):
        CalibrationMonitor(plot=True)
    CalibrationMonitor(plot=False)  # metrics alone need no matplotlib


def test_smooth_ece_grid_state_close_to_exact_for_small_bandwidths():
    # well-calibrated binary scores on many samples: the automatic bandwidth falls below 0.01,
    # where the streamed grid (10001 nodes) is an approximation of the exact splatting
    g = torch.Generator().manual_seed(12)
    p = torch.rand(40000, generator=g, dtype=torch.float64)
    y = (torch.rand(40000, generator=g, dtype=torch.float64) < p).long()
    exact, sigma = smooth_ece(p, y, input="probs", binary="positive", return_bandwidth=True)
    assert sigma < 0.01
    metric = SmoothECE(input="probs", binary="positive")
    metric.update(p, y)
    assert float(metric.compute()) == pytest.approx(float(exact), abs=1e-6)


@pytest.mark.parametrize("input", ["probs", "logits"])
def test_top_label_correctness_follows_the_first_maximum_on_ties(input):
    """The fast CPU path (amax + gather) must agree with ``max(-1)`` indices, ties included."""
    from lightning_mix.metrics.functional import top_label_confidence

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(500, 6, generator=generator)
    scores[:100] = 0.0  # all classes tied
    scores[100:200, :2] = 3.0  # two classes tied for the top
    scores[200:250, 1:3] = 5.0
    if input == "probs":
        scores = scores.softmax(-1)
    target = torch.randint(0, 6, (500,), generator=generator)
    conf, correct = top_label_confidence(scores, target, input)
    expected_conf, predicted = (scores.softmax(-1) if input == "logits" else scores).max(-1)
    torch.testing.assert_close(correct, (predicted == target).to(correct.dtype))
    torch.testing.assert_close(conf, expected_conf)
