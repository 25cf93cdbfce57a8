"""TransMix's label rule on hand-built attention maps and masks (Beckschen/TransMix, transmix.py)."""

from __future__ import annotations

import pytest
import torch

from lightning_mix.mixing.transmix import infer_patch_grid, patch_source_mask, probe_sources, transmix_lam


def test_lam_on_a_hand_built_attention_map():
    # 4 patches; class attention 0.1, 0.2, 0.3, 0.4 (the class token's own 0.0 is already removed);
    # patches 1 and 2 pasted: w_pasted = 0.5, w_total = 1.0 -> lam_attn = 1 - 0.5 = 0.5
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    pasted = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(transmix_lam(attention, pasted), torch.tensor([0.5]))
    # official code: averaged with the area lam; pasted area 0.25 -> (0.5 + 0.75) / 2 = 0.625
    torch.testing.assert_close(transmix_lam(attention, pasted, torch.tensor([0.25])), torch.tensor([0.625]))


def test_rows_need_not_sum_to_one():
    # a row of 0.05, 0.15, 0.3 over 3 patches (the class token kept 0.5): pasted patch 2 ->
    # w_own = 0.2, w_pasted = 0.3 -> lam_attn = 0.2 / 0.5 = 0.4
    got = transmix_lam(torch.tensor([[0.05, 0.15, 0.3]]), torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(got, torch.tensor([0.4]))


def test_uniform_attention_gives_the_area_lam_for_patch_aligned_boxes():
    b, p = 5, 49
    generator = torch.Generator().manual_seed(0)
    pasted = (torch.rand(b, p, generator=generator) < 0.3).float()
    area = pasted.mean(1)  # patch-aligned: pasted pixel area = pasted patch fraction
    uniform = torch.full((b, p), 1.0 / (p + 1))
    torch.testing.assert_close(transmix_lam(uniform, pasted), 1 - area)
    torch.testing.assert_close(transmix_lam(uniform, pasted, area), 1 - area)


def test_patch_mask_uses_the_top_left_pixel_of_each_patch():
    # 8x8 image, 2x2 grid of 4x4 patches; sample 0 gets sample 1's pixels in rows/cols [2, 6).
    # Top-left pixels (0,0), (0,4), (4,0), (4,4): only (4,4) is inside -> patch 3 pasted.
    sources = probe_sources(2, (8, 8), "cpu")
    sources[0, 0, 2:6, 2:6] = 1.0
    pasted, area = patch_source_mask(sources, [2, 2])
    assert pasted.tolist() == [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(area, torch.tensor([16 / 64, 0.0]))


def test_patch_grid_is_inferred_or_checked():
    assert infer_patch_grid(49, (28, 28)) == [7, 7]
    assert infer_patch_grid(16, (28, 28), patch_size=7) == [4, 4]
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        infer_patch_grid(50, (28, 28))
    with pytest.raises(ValueError, match="do not match"):
        infer_patch_grid(49, (28, 28), patch_size=7)
