"""SMMix's max-min window rule: constructed maps, hand-worked values and the authors' rule (tests/references)."""

from __future__ import annotations

import pytest
import torch
from references.smmix_authors import authors_smmix

from lightning_mix.mixing.smmix import image_token_attention, max_min_windows, smmix_images, window_token_indices


def test_window_token_indices_by_hand():
    windows = window_token_indices(3, 2)
    assert windows.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]


def test_regions_are_the_argmax_and_argmin_windows_of_a_constructed_map():
    grid, side = 4, 2
    scores = torch.full((2, grid * grid), 0.5)
    # sample 0: hot 2x2 window with top-left patch (1, 2), cold one at (0, 0);
    # sample 1: hot at (2, 0), cold at (2, 2)
    scores[0, [6, 7, 10, 11]] = 3.0
    scores[0, [0, 1, 4, 5]] = 0.0
    scores[1, [8, 9, 12, 13]] = 3.0
    scores[1, [10, 11, 14, 15]] = 0.0
    best, worst = max_min_windows(scores, grid, side)
    windows = window_token_indices(grid, side)
    assert windows[best].tolist() == [[6, 7, 10, 11], [8, 9, 12, 13]]
    assert windows[worst].tolist() == [[0, 1, 4, 5], [10, 11, 14, 15]]
    # window positions in raster order of the top-left patch: (1, 2) is window 1 * 3 + 2
    assert best.tolist() == [5, 6] and worst.tolist() == [0, 8]


def test_sample_least_attended_window_receives_partner_most_attended_window():
    side, patch = 2, 2
    inputs = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    scores = torch.full((2, 16), 0.1)
    scores[0, [0, 1, 4, 5]] = 1.0  # sample 0: hottest top-left; coldest: bottom-right
    scores[0, [10, 11, 14, 15]] = 0.0
    scores[1, [10, 11, 14, 15]] = 1.0  # sample 1: hottest bottom-right; coldest: top-left
    scores[1, [0, 1, 4, 5]] = 0.0
    partner = torch.tensor([1, 0])
    mixed, source_mask, lam = smmix_images(inputs, scores, side, patch, partner)
    assert lam == pytest.approx(1 - 4 / 16)
    # sample 0's bottom-right 4x4 pixels now hold sample 1's bottom-right 4x4 pixels (its hottest window)
    torch.testing.assert_close(mixed[0, :, 4:, 4:], inputs[1, :, 4:, 4:])
    torch.testing.assert_close(mixed[0, :, :4, :], inputs[0, :, :4, :])
    torch.testing.assert_close(mixed[0, :, 4:, :4], inputs[0, :, 4:, :4])
    # sample 1's top-left receives sample 0's top-left
    torch.testing.assert_close(mixed[1, :, :4, :4], inputs[0, :, :4, :4])
    assert source_mask[0].nonzero().flatten().tolist() == [10, 11, 14, 15]
    assert source_mask[1].nonzero().flatten().tolist() == [0, 1, 4, 5]


def test_translated_window_keeps_the_token_order():
    # sample 0's hottest window is at the top-left, sample 1's coldest at the bottom-right: token j -> token j
    inputs = torch.randn(2, 3, 6, 6)
    scores = torch.full((2, 9), 0.5)
    scores[0, [0, 1, 3, 4]] = 2.0
    scores[1, [4, 5, 7, 8]] = 0.0
    mixed, _, _ = smmix_images(inputs, scores, 2, 2, torch.tensor([1, 0]))
    torch.testing.assert_close(mixed[1, :, 2:, 2:], inputs[0, :, :4, :4])


@pytest.mark.parametrize("grid,side,batch", [(7, 3, 6), (7, 1, 4), (4, 3, 5), (7, 5, 2)])
def test_matches_the_authors_rule(grid, side, batch):
    g = torch.Generator().manual_seed(grid * 10 + side)
    patch = 4
    inputs = torch.randn(batch, 3, grid * patch, grid * patch, generator=g)
    scores = torch.rand(batch, grid * grid, generator=g)
    partner = torch.arange(batch - 1, -1, -1)
    mixed, mask, lam = smmix_images(inputs, scores, side, patch, partner)
    want, want_mask, want_lam = authors_smmix(inputs, scores, side, patch)
    torch.testing.assert_close(mixed, want, rtol=0, atol=0)
    assert torch.equal(mask, want_mask) and lam == pytest.approx(want_lam)


def test_image_token_attention_is_the_mean_over_heads_and_image_queries():
    attn = torch.rand(2, 3, 5, 5)
    scores = image_token_attention(attn, 1)
    want = torch.stack([torch.stack([attn[b, :, 1:, k + 1].mean() for k in range(4)]) for b in range(2)])
    torch.testing.assert_close(scores, want)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="square"):
        smmix_images(torch.randn(2, 1, 8, 12), torch.rand(2, 6), 1, 4, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="window side"):
        window_token_indices(3, 4)
