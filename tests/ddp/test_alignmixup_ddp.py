"""AlignMixup under DDP (2 CPU processes): the hooked feature mix keeps the ranks in sync."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script


@pytest.mark.slow
def test_aligned_feature_mix_keeps_the_ranks_in_sync(tmp_path):
    ranks = run_ddp_script("alignmixup_ddp.py", tmp_path)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(choice in (0, 1) for rank in ranks for _, choice in rank["draws"])
    # each rank drew its own lam
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(ranks[0]["draws"], ranks[1]["draws"]))
