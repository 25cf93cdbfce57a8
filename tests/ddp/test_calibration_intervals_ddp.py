"""CalibrationMonitor's test intervals under DDP (2 CPU processes) equal one process's on the gathered rows."""

from __future__ import annotations

import pytest
import torch
from calibration_interval_helpers import make_data
from ddp_utils import run_ddp_script

from lightning_mix.evaluation import bootstrap_ci
from lightning_mix.metrics.functional import calibration_error


@pytest.mark.slow
def test_ddp_intervals_bootstrap_all_ranks_rows(tmp_path):
    ranks = run_ddp_script("calibration_intervals_ddp.py", tmp_path)
    x, y, weight = make_data()
    logits = x @ weight.T
    # DistributedSampler (no shuffle for test) gives rank r the rows r, r + 2, ...; the gather puts rank 0's first
    order = torch.cat([torch.arange(0, len(y), 2), torch.arange(1, len(y), 2)])
    statistics = {
        "nll": lambda o, t: torch.nn.functional.cross_entropy(o, t),
        "ece": lambda o, t: calibration_error(o, t, n_bins=15, input="logits"),
    }
    for name, statistic in statistics.items():
        direct = bootstrap_ci((logits[order], y[order]), statistic, n_resamples=30, vectorized=False)
        for rank in ranks:
            assert rank["metrics"][f"test/cal/{name}_low"] == pytest.approx(direct.low, rel=1e-5), name
            assert rank["metrics"][f"test/cal/{name}_high"] == pytest.approx(direct.high, rel=1e-5), name
            assert rank["metrics"][f"test/cal/{name}"] == pytest.approx(float(statistic(logits, y)), rel=1e-5)
        torch.testing.assert_close(
            ranks[0]["replicates"][f"test/cal/{name}"], ranks[1]["replicates"][f"test/cal/{name}"]
        )
