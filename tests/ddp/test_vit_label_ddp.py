"""TransMix and TLAlign under DDP (2 CPU processes): each rank relabels from its own forward, by the authors' rules."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script
from references.vit_label_rules import tl_align_class_label

from lightning_mix.mixing import dense_targets

NUM_CLASSES = 5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["transmix", "tl_align"])
def test_each_rank_relabels_by_the_rule_and_ranks_draw_differently(method, tmp_path):
    ranks = run_ddp_script("vit_label_ddp.py", tmp_path, method)
    for rank in ranks:
        for (x0, labels), record, index, lam in zip(rank["original"], rank["seen"], rank["index"], rank["lam"]):
            own = dense_targets(labels, NUM_CLASSES)
            partner = own.index_select(0, index)
            pasted_pixels = (record["x"] != x0)[:, 0]
            pasted = pasted_pixels[:, ::4, ::4].reshape(len(labels), -1).float()
            area_lam = 1 - pasted_pixels.flatten(1).float().mean(1)
            if method == "transmix":
                cls = record["attentions"][-1][:, :, 0, 1:].mean(1)
                want_lam = ((cls * (1 - pasted)).sum(1) / cls.sum(1) + area_lam) / 2
                want_lam = torch.where(index == torch.arange(len(labels)), 1.0, want_lam)
                want = want_lam.view(-1, 1) * own + (1 - want_lam.view(-1, 1)) * partner
            else:
                want = tl_align_class_label(own, partner, area_lam, pasted, record["attentions"])
            torch.testing.assert_close(record["y"], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(record["y"], lam.view(-1, 1) * own + (1 - lam.view(-1, 1)) * partner)
    assert not torch.equal(ranks[0]["lam"][0], ranks[1]["lam"][0])  # each rank draws its own boxes
