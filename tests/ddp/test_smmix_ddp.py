"""SMMixMixin under DDP (2 CPU processes): ranks draw their own steps and stay in sync."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script


@pytest.mark.slow
def test_ranks_draw_their_own_steps_and_keep_identical_weights(tmp_path):
    # the token head takes no part in Mixup steps: DDP needs find_unused_parameters (as the authors set)
    ranks = run_ddp_script("smmix_ddp.py", tmp_path, "ddp_find_unused_parameters_true")
    modes = [rank["modes"] for rank in ranks]
    assert all(len(m) == 6 for m in modes) and modes[0] != modes[1]  # per-rank streams
    assert {"smmix", "mixup"} <= set(modes[0] + modes[1])
    for name, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][name], value, rtol=0, atol=0)


@pytest.mark.slow
def test_plain_ddp_is_refused_at_fit_start(tmp_path):
    with pytest.raises(AssertionError, match="ddp_find_unused_parameters_true"):
        run_ddp_script("smmix_ddp.py", tmp_path, "ddp", timeout=120)
