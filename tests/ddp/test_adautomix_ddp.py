"""DDP (2 CPU processes) test of AdAutoMixMixin: ranks agree, draw differently, and resume exactly."""

import pytest
import torch

GEN = "adautomix_generator."


@pytest.mark.slow
def test_adautomix_ddp_ranks_agree_draw_differently_and_resume_exactly(tmp_path):
    """Two 2-process launches of tests/ddp/scripts/adautomix_ddp.py: straight 2 epochs (own accumulation of 2
    batches), then resumed from the end of epoch 0."""
    from ddp_utils import run_ddp_script

    ckpt, straight_dir, resumed_dir = tmp_path / "ckpt", tmp_path / "straight", tmp_path / "resumed"
    for folder in (ckpt, straight_dir, resumed_dir):
        folder.mkdir()
    s0, s1 = run_ddp_script("adautomix_ddp.py", straight_dir, "straight", str(ckpt))
    r0, r1 = run_ddp_script("adautomix_ddp.py", resumed_dir, "resume", str(ckpt))
    params = s0["param_names"]
    assert any(n.startswith(GEN) for n in params)
    assert s0["global_step"] == s1["global_step"] == 4  # 2 epochs x 4 batches / 2 accumulated
    for name in params:  # DDP kept the classifier, the generator and the target network equal on both ranks
        torch.testing.assert_close(s0["state"][name], s1["state"][name], rtol=0, atol=0)
        if not name.startswith(GEN):
            torch.testing.assert_close(s0["momentum"][name], s1["momentum"][name], rtol=0, atol=0)
    assert s0["counter"] == s1["counter"] == 8
    assert not torch.equal(s0["next_indices"], s1["next_indices"]) or not torch.equal(s0["next_lam"], s1["next_lam"])
    for straight, resumed in ((s0, r0), (s1, r1)):
        # rank 1's BatchNorm statistics match only because the mixin broadcasts rank 0's buffers every step
        # (Lightning's DDP wrapper stops doing it under manual optimisation; the resumed rank 1 starts from rank 0's)
        for name, value in straight["state"].items():
            torch.testing.assert_close(value, resumed["state"][name], rtol=0, atol=0, msg=name)
        for name in params:
            if not name.startswith(GEN):
                torch.testing.assert_close(straight["momentum"][name], resumed["momentum"][name], rtol=0, atol=0)
        assert len(straight["optimizers"]) == 2 and straight["lrs"] == resumed["lrs"]
        for opt_a, opt_b in zip(straight["optimizers"], resumed["optimizers"]):
            for key, moments in opt_a.items():
                for moment, value in moments.items():
                    torch.testing.assert_close(value, opt_b[key][moment], rtol=0, atol=0)
        assert torch.equal(straight["next_indices"], resumed["next_indices"])
