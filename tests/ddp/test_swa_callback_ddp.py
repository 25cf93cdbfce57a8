"""DDP (2 CPU processes) tests of swa callback, moved from tests/lightning/test_swa_callback.py."""

from __future__ import annotations

import torch


def test_ddp_identical_weights_and_pooled_bn(tmp_path):
    from ddp_utils import run_ddp_script

    r0, r1 = run_ddp_script("swa_ddp.py", tmp_path)
    assert r0["num_averaged"] == r1["num_averaged"] == 2
    for name in r0["module"]:
        assert torch.equal(r0["module"][name], r1["module"][name]), name
    # each rank saw half the data; the pooled statistics are those of all of it
    x = r0["train_x"].double()
    assert torch.allclose(r0["module"]["bn_in.running_mean"].double(), x.mean(0), atol=1e-5)
    assert torch.allclose(r0["module"]["bn_in.running_var"].double(), x.var(0, unbiased=True), atol=1e-4)
