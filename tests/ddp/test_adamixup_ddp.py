"""DDP (2 CPU processes) test of AdaMixUpMixin: ranks agree on every weight, draw differently, resume exactly."""

import pytest
import torch


@pytest.mark.slow
def test_adamixup_ddp_ranks_agree_draw_differently_and_resume_exactly(tmp_path):
    """Two 2-process DDP launches (tests/ddp/scripts/adamixup_ddp.py): straight 4 steps, then resumed from step 2."""
    from ddp_utils import run_ddp_script

    ckpt, straight_dir, resumed_dir = tmp_path / "ckpt", tmp_path / "straight", tmp_path / "resumed"
    for folder in (ckpt, straight_dir, resumed_dir):
        folder.mkdir()
    s0, s1 = run_ddp_script("adamixup_ddp.py", straight_dir, "straight", str(ckpt))
    r0, r1 = run_ddp_script("adamixup_ddp.py", resumed_dir, "resume", str(ckpt))
    params = s0["param_names"]
    for prefix in ("adamixup_policy_trunk.", "adamixup_policy_head.", "adamixup_discriminator."):
        assert any(n.startswith(prefix) for n in params)
    for name in params:  # DDP kept classifier, generator and discriminator equal on both ranks
        torch.testing.assert_close(s0["state"][name], s1["state"][name], rtol=0, atol=0, msg=name)
    assert s0["counter"] == s1["counter"] == 4
    assert not torch.equal(s0["next_perm"], s1["next_perm"]) or not torch.equal(s0["next_uniform"], s1["next_uniform"])
    for straight, resumed in ((s0, r0), (s1, r1)):
        for name, value in straight["state"].items():
            torch.testing.assert_close(value, resumed["state"][name], rtol=0, atol=0, msg=name)
        for key, moments in straight["optimizer"].items():
            for moment, value in moments.items():
                torch.testing.assert_close(value, resumed["optimizer"][key][moment], rtol=0, atol=0)
        assert torch.equal(straight["next_perm"], resumed["next_perm"])
        assert torch.equal(straight["next_uniform"], resumed["next_uniform"])
