"""DDP (2 CPU processes) tests of cmixup callback, moved from tests/lightning/test_cmixup_callback.py."""

from __future__ import annotations


def test_ddp_ranks_take_disjoint_anchors_of_the_shared_epoch(tmp_path):
    from ddp_utils import run_ddp_script

    ranks = run_ddp_script("cmixup_ddp.py", tmp_path)
    anchors = []
    for result in ranks:
        assert len(result["rows"]) == 4  # 48 samples, batches of 6 anchors, 8 batches shared by 2 ranks
        assert all(rows.shape == (12,) for rows in result["rows"])  # 6 anchors, then their 6 partners
        assert result["mixed_rows"] == [6] * 4  # training_step sees the mixed anchors only
        anchors.append({int(i) for rows in result["rows"] for i in rows[:6]})
    assert len(anchors[0]) == len(anchors[1]) == 24
    assert not anchors[0] & anchors[1]
