"""DDP with 2 CPU processes gives the same calibration metrics and temperature as one process."""

from __future__ import annotations

import pytest
from ddp_utils import run_ddp_script

from lightning_mix.callbacks.calibration_monitor import AVAILABLE_METRICS, _build_metric
from lightning_mix.metrics import fit_temperature


@pytest.mark.slow
def test_ddp_metrics_and_temperature_equal_single_process(tmp_path):
    ranks = run_ddp_script("cal_metrics.py", tmp_path)
    data = ranks[0]
    logits = data["x"] @ data["weight"].T
    y = data["y"]
    for name in AVAILABLE_METRICS:
        metric = _build_metric(name, 15, logits.shape[1])
        metric.update(logits, y)
        expected = float(metric.compute())
        for rank in ranks:
            assert rank["metrics"][f"test/cal/{name}"] == pytest.approx(expected, rel=1e-5, abs=1e-6), name
    expected_t = fit_temperature(logits, y)
    assert ranks[0]["temperature"] == ranks[1]["temperature"]
    assert ranks[0]["temperature"] == pytest.approx(expected_t, rel=1e-4)
    assert 1.5 < expected_t < 4.0  # the weights were scaled by 2.5
