"""CalibrationMonitor(intervals=True): the logged test intervals equal a direct bootstrap_ci of the metric."""

from __future__ import annotations

import pytest
import torch
from calibration_interval_helpers import FixedLinear, make_data
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import CalibrationMonitor
from lightning_mix.evaluation import bootstrap_ci
from lightning_mix.metrics.functional import calibration_error


def _reference_statistics():
    """The metrics written from their definitions, independent of the callback's Metric classes."""

    def nll(logits, y):
        return torch.nn.functional.cross_entropy(logits, y)

    def brier(logits, y):
        return (logits.softmax(-1) - torch.nn.functional.one_hot(y, logits.shape[-1])).pow(2).sum(-1).mean()

    def ece(logits, y):
        return calibration_error(logits, y, n_bins=15, norm="l1", input="logits")

    return {"nll": nll, "brier": brier, "ece": ece}


def test_logged_intervals_equal_a_direct_bootstrap():
    x, y, weight = make_data()
    monitor = CalibrationMonitor(
        metrics=["ece", "nll", "brier"], plot=False, stages=["test"], intervals=True, n_resamples=40, bootstrap_seed=3
    )
    trainer = tiny_trainer(callbacks=[monitor])
    results = trainer.test(FixedLinear(weight), DataLoader(TensorDataset(x, y), batch_size=64), verbose=False)[0]
    logits = x @ weight.T
    for name, statistic in _reference_statistics().items():
        direct = bootstrap_ci((logits, y), statistic, n_resamples=40, seed=3, vectorized=False)
        assert results[f"test/cal/{name}_low"] == pytest.approx(direct.low, rel=1e-5), name
        assert results[f"test/cal/{name}_high"] == pytest.approx(direct.high, rel=1e-5), name
        stored = monitor.last_intervals[f"test/cal/{name}"]
        assert stored.estimate == pytest.approx(results[f"test/cal/{name}"], rel=1e-5)
        assert stored.low <= stored.high and stored.confidence_level == 0.95


def test_intervals_are_off_by_default_and_only_on_test():
    x, y, weight = make_data()
    monitor = CalibrationMonitor(metrics=["nll"], plot=False)
    trainer = tiny_trainer(callbacks=[monitor])
    results = trainer.test(FixedLinear(weight), DataLoader(TensorDataset(x, y), batch_size=64), verbose=False)[0]
    assert "test/cal/nll" in results and "test/cal/nll_low" not in results and monitor.last_intervals == {}


def test_bad_interval_settings_are_refused_at_init():
    with pytest.raises(ValueError, match="leaves test out"):
        CalibrationMonitor(plot=False, stages=["validate"], intervals=True)
    with pytest.raises(ValueError, match="n_resamples must be at least 2"):
        CalibrationMonitor(plot=False, intervals=True, n_resamples=1)
    with pytest.raises(ValueError, match=r"confidence_level in \(0, 1\)"):
        CalibrationMonitor(plot=False, intervals=True, confidence_level=1.0)
