"""DDP (2 CPU processes) tests of automix, moved from tests/lightning/test_automix.py."""

import pytest
import torch


@pytest.mark.slow
def test_ddp_ranks_agree_draw_differently_and_resume_exactly(tmp_path):
    """Two 2-process DDP launches (tests/ddp/scripts/automix_ddp.py): straight 4 steps, then resumed from step 2,
    for AutoMix and SAMix."""
    from ddp_utils import run_ddp_script

    ckpt, straight_dir, resumed_dir = tmp_path / "ckpt", tmp_path / "straight", tmp_path / "resumed"
    for folder in (ckpt, straight_dir, resumed_dir):
        folder.mkdir()
    s0_all, s1_all = run_ddp_script("automix_ddp.py", straight_dir, "straight", str(ckpt))
    r0_all, r1_all = run_ddp_script("automix_ddp.py", resumed_dir, "resume", str(ckpt))
    for method in ("automix", "samix"):
        s0, s1, r0, r1 = s0_all[method], s1_all[method], r0_all[method], r1_all[method]
        params = s0["param_names"]
        assert any(n.startswith("automix_block.") for n in params)
        for name in params:  # DDP kept the classifier, the Mix Block and the momentum copy equal on both ranks
            torch.testing.assert_close(s0["state"][name], s1["state"][name], rtol=0, atol=0)
            if not name.startswith("automix_block."):
                torch.testing.assert_close(s0["momentum"][name], s1["momentum"][name], rtol=0, atol=0)
        assert s0["counter"] == s1["counter"] == 4
        assert not torch.equal(s0["next_index"], s1["next_index"]) or not torch.equal(s0["next_lam"], s1["next_lam"])
        for straight, resumed in ((s0, r0), (s1, r1)):
            for name, value in straight["state"].items():
                torch.testing.assert_close(value, resumed["state"][name], rtol=0, atol=0, msg=f"{method} {name}")
            for name in params:
                if not name.startswith("automix_block."):
                    torch.testing.assert_close(straight["momentum"][name], resumed["momentum"][name], rtol=0, atol=0)
            for key, moments in straight["optimizer"].items():
                for moment, value in moments.items():
                    torch.testing.assert_close(value, resumed["optimizer"][key][moment], rtol=0, atol=0)
            assert torch.equal(straight["next_index"], resumed["next_index"])
