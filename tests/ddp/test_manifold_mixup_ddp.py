"""DDP (2 CPU processes) tests of manifold mixup, moved from tests/lightning/test_manifold_mixup.py."""

import pytest
import torch


@pytest.mark.slow
def test_ddp_manifold_regmixup_and_rank_mixup(tmp_path):
    """One 2-process DDP launch fits all three model-level methods (tests/ddp/scripts/m5_model_mixing.py)."""
    from ddp_utils import run_ddp_script

    r0, r1 = run_ddp_script("m5_model_mixing.py", tmp_path)
    for method, size in (("manifold", 8), ("regmixup", 16), ("rank_mixup", 8)):
        a, b = r0[method], r1[method]
        assert a["sizes"] == b["sizes"] == [size] * 3, method  # RegMixup doubles each rank's batch of 8
        assert not torch.equal(a["lams"], b["lams"]), method  # seed + rank: the ranks draw differently
        for name in a["params"]:
            torch.testing.assert_close(a["params"][name], b["params"][name])  # DDP kept the weights equal
        # the demo model averages its epoch-level training metrics over ranks, which saw different data
        assert a["train_epoch_metrics"] == b["train_epoch_metrics"], method
    assert r0["manifold"]["counter"] == r1["manifold"]["counter"] == 3
    assert r0["rank_mixup"]["counter"] == r1["rank_mixup"]["counter"] == 3
