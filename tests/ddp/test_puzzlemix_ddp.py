"""PuzzleMix under DDP (2 CPU processes): the steps after each saliency pass run and keep the ranks in sync."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ddp_utils import run_ddp_script
from puzzlemix_helpers import TinyCNN

from lightning_mix.losses import soft_cross_entropy


def _expected_first_gradient(ranks, clean_lam):
    """By hand: the mean over ranks of grad(module loss on the mix + clean_lam * CE on the clean batch).

    With an adversarial draw the saliency pass, and so the clean loss, sees the batch plus the random
    start (the authors' order); the images are pixels here (no normalisation)."""
    total = []
    for rank in ranks:
        x, y, state = rank["first_clean"]
        if rank["first_start"] is not None:
            x = x + rank["first_start"]
        x_mix, y_mix = rank["first_mixed"]
        model = TinyCNN(dropout=0.0)
        model.load_state_dict(state)
        model.train()
        loss = soft_cross_entropy(model(x_mix), y_mix) + clean_lam * F.cross_entropy(model(x), y)
        total.append(torch.autograd.grad(loss, list(model.parameters())))
    return [(a + b) / 2 for a, b in zip(*total)]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "adversarial"])
def test_saliency_pass_neither_fails_nor_desynchronises_the_ranks(tmp_path, variant):
    """``adversarial``: adv_p=1 and clean_lam=0.5; the clean loss's gradient comes from a forward of the bare
    module, and must still be all-reduced with the rest (each rank's clean batch differs)."""
    ranks = run_ddp_script("puzzlemix_ddp.py", tmp_path, variant)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    # gradients were all-reduced every step: identical gradients and parameters on both ranks
    assert len(ranks[0]["grads"]) == len(ranks[1]["grads"]) == 3
    for step_a, step_b in zip(ranks[0]["grads"], ranks[1]["grads"]):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # while each rank mixed its own batch with its own draws
    assert len(ranks[0]["lams"]) == len(ranks[1]["lams"]) == 3
    assert any(not torch.equal(a, b) for a, b in zip(ranks[0]["lams"], ranks[1]["lams"]))
    assert ranks[0]["adversarial"] == ranks[1]["adversarial"] == [variant == "adversarial"] * 3
    # the first step's gradient is the mean over ranks of each rank's full loss (clean term included)
    expected = _expected_first_gradient(ranks, 0.5 if variant == "adversarial" else 0.0)
    for got, want in zip(ranks[0]["grads"][0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
