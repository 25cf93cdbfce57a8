"""Issue 10, item 12: a DDP run killed and resumed ends with the same EMA and SWA averages, bit for bit.

Each rank's BatchNorm statistics drift apart between DDP's buffer broadcasts, so each rank's average of
them is its own; the checkpoint holds rank 0's. The callbacks use rank 0's average everywhere (as DDP
uses rank 0's buffers), which a resumed run continues exactly; today's code ends with the mean over
ranks, which a resumed run (all ranks restarting from rank 0's) cannot reproduce.
"""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script

pytestmark = pytest.mark.slow


def test_ddp_resume_gives_bitwise_identical_averages(tmp_path):
    ckpt = tmp_path / "ckpt"
    (tmp_path / "straight").mkdir()
    (tmp_path / "first").mkdir()
    (tmp_path / "resume").mkdir()
    straight = run_ddp_script("averaging_resume_ddp.py", tmp_path / "straight", "straight", str(ckpt))
    run_ddp_script("averaging_resume_ddp.py", tmp_path / "first", "first", str(ckpt))
    resumed = run_ddp_script("averaging_resume_ddp.py", tmp_path / "resume", "resume", str(ckpt))
    # the ranks' own averages of the BatchNorm statistics differ (what made resume inexact)
    local0, local1 = straight[0]["local"]["EMA"], straight[1]["local"]["EMA"]
    assert not torch.equal(local0["bn_in.running_mean"], local1["bn_in.running_mean"])
    for name in ("EMA", "SWA"):  # rank 0's running averages at the last epoch end
        for key, value in straight[0]["local"][name].items():
            assert torch.equal(value, resumed[0]["local"][name][key]), (name, key)
    for rank in range(2):
        a, b = straight[rank], resumed[rank]
        assert a["num_updates"] == b["num_updates"] == (8, 3)  # 2 optimizer steps per epoch per rank; SWA from 1
        for key in ("module", "ema", "swa"):  # after fit: the module holds the EMA
            for name, value in a[key].items():
                assert torch.equal(value, b[key][name]), (rank, key, name)
    for name, value in straight[0]["module"].items():
        assert torch.equal(value, straight[1]["module"][name]), name  # every rank ends with the same model
        assert torch.equal(value, straight[0]["ema"][name]), name  # the owner EMA is in the module
        if "running" in name:  # rank 0's averaged statistics, on every rank
            assert torch.equal(straight[1]["ema"][name], local0[name]), name
