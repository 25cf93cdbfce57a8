"""CoMixup under DDP (2 CPU processes): the steps after each train-mode saliency pass run and keep the ranks in sync."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script


@pytest.mark.slow
def test_comixup_neither_fails_nor_desynchronises_the_ranks(tmp_path):
    ranks = run_ddp_script("comixup_ddp.py", tmp_path)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    # gradients were all-reduced every step: identical parameters on both ranks
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # while each rank mixed its own batch with its own draws, each mix valid
    assert len(ranks[0]["weights"]) == len(ranks[1]["weights"]) == 3
    for w in ranks[0]["weights"] + ranks[1]["weights"]:
        torch.testing.assert_close(w.sum(dim=1), torch.ones(16))
    assert any(not torch.equal(a, b) for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]))
