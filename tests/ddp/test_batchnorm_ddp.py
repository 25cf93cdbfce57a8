"""DDP (2 CPU processes) tests of batchnorm, moved from tests/unit/averaging/test_batchnorm.py."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_ddp_pools_statistics_across_ranks(tmp_path):
    from ddp_utils import run_ddp_script

    results = run_ddp_script("bn_recalibrate.py", tmp_path)
    data = torch.cat(results[0]["all_inputs"]).double()
    for r in results:
        torch.testing.assert_close(r["running_mean"].double(), data.mean(0), rtol=0, atol=1e-5)
        torch.testing.assert_close(r["running_var"].double(), data.var(0), rtol=1e-5, atol=1e-5)
        assert int(r["num_batches_tracked"]) == 5  # 3 batches on rank 0 + 2 on rank 1
    assert torch.equal(results[0]["running_var"], results[1]["running_var"])
