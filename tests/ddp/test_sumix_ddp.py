"""SUMixMixin under plain DDP (2 CPU processes): per-rank draws, every parameter used, identical parameters."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script


@pytest.mark.slow
def test_ranks_draw_their_own_mixes_and_keep_identical_weights(tmp_path):
    # plain "ddp" (no unused-parameter search): the classifier and the uncertainty head take part in every step
    ranks = run_ddp_script("sumix_ddp.py", tmp_path)
    lams = [torch.stack(rank["lams"]) for rank in ranks]
    assert lams[0].shape == lams[1].shape == (4, 8)
    assert not torch.equal(lams[0], lams[1])  # per-rank streams
    for rank in ranks:
        corrected = torch.stack(rank["corrected"])
        assert torch.isfinite(corrected).all() and ((corrected >= 0) & (corrected <= 1)).all()
    assert any(name.startswith("sumix_uncertainty_head.") for name in ranks[0]["params"])
    # parameters: equal on both ranks (BatchNorm's running statistics are per rank, as in any DDP without SyncBN)
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=0, atol=0, msg=name)
