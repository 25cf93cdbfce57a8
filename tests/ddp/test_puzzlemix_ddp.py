"""PuzzleMix under DDP (2 CPU processes): the steps after each saliency pass run and keep the ranks in sync."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script


@pytest.mark.slow
def test_saliency_pass_neither_fails_nor_desynchronises_the_ranks(tmp_path):
    ranks = run_ddp_script("puzzlemix_ddp.py", tmp_path)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    # gradients were all-reduced every step: identical parameters on both ranks
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # while each rank mixed its own batch with its own draws
    assert len(ranks[0]["lams"]) == len(ranks[1]["lams"]) == 3
    assert any(not torch.equal(a, b) for a, b in zip(ranks[0]["lams"], ranks[1]["lams"]))
