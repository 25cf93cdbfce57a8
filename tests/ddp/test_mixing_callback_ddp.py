"""DDP (2 CPU processes) tests of mixing callback, moved from tests/lightning/test_mixing_callback.py."""

from __future__ import annotations

import torch
from ddp_utils import run_ddp_script


def test_ddp_ranks_draw_different_lam(tmp_path):
    rank0, rank1 = run_ddp_script("mixing_callback_ddp.py", tmp_path)
    assert len(rank0["lams"]) == len(rank1["lams"]) > 0
    assert not torch.allclose(rank0["lams"][0], rank1["lams"][0])
    for targets in rank0["targets"] + rank1["targets"]:
        torch.testing.assert_close(targets.sum(-1), torch.ones(targets.shape[0]))
