"""DDP (2 CPU processes) tests of ema callback, moved from tests/lightning/test_ema_callback.py."""

from __future__ import annotations

import torch


def test_ddp_ranks_end_identical(tmp_path):
    from ddp_utils import run_ddp_script

    r0, r1 = run_ddp_script("ema_ddp.py", tmp_path)
    assert r0["num_updates"] == r1["num_updates"] == r0["global_step"] == 4  # 64 samples / 2 ranks / 16
    for key in ("module", "ema"):  # after fit every rank has rank 0's averaged buffers
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), (key, name)
    assert len(r0["raw"]) == 8
    for name in r0["raw"]:  # trained parameters agree (DDP); BN statistics are per rank between broadcasts
        assert torch.equal(r0["raw"][name], r1["raw"][name]), name
    for name, value in r0["module"].items():
        assert torch.equal(value, r0["ema"][name].float())  # the module holds the EMA after fit
    assert r0["metrics"]["val/loss"] == r1["metrics"]["val/loss"]  # validated with the same (EMA) weights
