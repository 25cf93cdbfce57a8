"""PuzzleMix's ``t_size``: transport on a grid finer than the mask's, against the authors' ``mask_transport``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "references"))
from puzzlemix_authors import mask_transport

from lightning_mix.mixing.puzzlemix import PuzzleMixer, transport_grid


def _case(seed=0, b=6, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, size, size, generator=g)
    targets = torch.eye(3)[torch.randint(0, 3, (b,), generator=g)]
    saliency = torch.rand(b, size, size, generator=g) ** 4
    index = torch.roll(torch.arange(b), 1)
    return x, targets, saliency, index, torch.full((b,), 0.5)


def test_t_size_at_or_above_the_block_size_is_the_mask_grid():
    x, t, s, index, lam = _case()
    plain = PuzzleMixer(solver="torch").mix(x, t, s, 4, index, lam)
    for t_size in (4, 8):
        same = PuzzleMixer(solver="torch", t_size=t_size).mix(x, t, s, 4, index, lam)
        assert torch.equal(same.inputs, plain.inputs)


def test_finer_transport_keeps_the_mask_and_follows_the_authors_plan():
    x, t, s, index, lam = _case()
    block_num, t_size, size = 2, 2, 16
    grid = size // t_size  # 8x8 transport grid under a 2x2 mask
    plain = PuzzleMixer(n_labels=2, solver="torch", transport=False).mix(x, t, s, block_num, index, lam)
    fine = PuzzleMixer(n_labels=2, solver="torch", t_size=t_size)  # a 0/1 mask: every pixel is one source
    # each 2x2 transport block of the own image carries its index + 1; partners are zeros
    ids = (torch.arange(grid * grid, dtype=torch.float32) + 1).view(1, 1, grid, grid)
    coded = F.interpolate(ids, size=size).expand(6, 1, size, size).contiguous()
    out = fine.mix(x, t, s, block_num, index, lam, coded, torch.zeros_like(coded))
    torch.testing.assert_close(out.lam, plain.lam)  # the mask is the mask grid's
    mask = (out.inputs > 0).float()
    block_mask = F.avg_pool2d(mask, size // block_num)  # (B, 1, 2, 2), 0 or 1
    got = F.avg_pool2d(out.inputs, t_size).view(6, grid * grid)  # destination q shows source id - 1
    # the authors: mask brought to the grid by nearest interpolation, saliency avg-pooled at t_size, normalised
    t_mask = F.interpolate(block_mask, size=grid)
    pooled = F.avg_pool2d(s.unsqueeze(1), t_size).squeeze(1)
    pooled = pooled / pooled.flatten(1).sum(1).view(-1, 1, 1)
    plan = mask_transport(t_mask, pooled, eps=0.8)  # plan[b, p, q]: source p moves to q
    compared = 0
    for b in range(6):
        for q in range(grid * grid):
            sources = plan[b, :, q].nonzero().flatten()
            if t_mask.flatten(1)[b, q] > 0 and len(sources) == 1:
                assert int(got[b, q]) - 1 == int(sources[0])
                compared += 1
    assert compared > 100
    # and the own image's blocks are a permutation: every visible destination shows a distinct source
    for b in range(6):
        shown = got[b][t_mask.flatten(1)[b] > 0]
        assert len(torch.unique(shown)) == len(shown)


def test_t_size_that_does_not_divide_the_block_size_is_refused():
    x, t, s, index, lam = _case()
    with pytest.raises(ValueError, match="t_size=3 must divide the mask's block size 8"):
        transport_grid(x, 2, 3)
    with pytest.raises(ValueError, match="t_size must be -1"):
        PuzzleMixer(t_size=0)
