"""PatchCutMix: the pasted box lies on the patch grid, pasted pixels are the partner's, lam is the pasted area."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mix.mixing import dense_targets, mix_targets
from lightning_mix.mixing.patch_grid import PatchCutMix, grid_box_corners


def _source_map(mixer, b=6, size=28, mode_seed=0):
    """Mix an image whose every pixel holds its sample index: the output says where each pixel came from."""
    probe = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, size, size).contiguous()
    targets = dense_targets(torch.arange(b) % 3, 3)
    out = mixer(probe, targets, generator=torch.Generator().manual_seed(mode_seed))
    return out, targets


def test_hand_worked_box_on_a_7x7_grid():
    # lam = 0.5 on a 7x7 grid (28 px, patch 4): side floor(7 * sqrt(0.5)) = 4 patches; centre (3, 3)
    # -> patches [3 - 2, 3 + 2) = [1, 5) -> pixels [4, 20); pasted area 16 * 16 = 256 of 784.
    lo, hi = grid_box_corners(torch.tensor([0.5]), torch.tensor([[3, 3]]), [7, 7], 4)
    assert lo.tolist() == [[4, 4]] and hi.tolist() == [[20, 20]]
    # a centre at the corner clips: patches [0 - 2, 0 + 2) -> [0, 2) -> pixels [0, 8)
    lo, hi = grid_box_corners(torch.tensor([0.5]), torch.tensor([[0, 6]]), [7, 7], 4)
    assert lo.tolist() == [[0, 16]] and hi.tolist() == [[8, 28]]


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pasted_region_is_whole_patches_and_lam_is_its_area(mode, seed):
    b, size, patch = 6, 28, 4
    out, targets = _source_map(PatchCutMix(alpha=1.0, patch_size=patch, mode=mode), b, size, seed)
    src = out.inputs[:, 0]
    own = torch.arange(b, dtype=torch.float32).view(b, 1, 1)
    pasted = src != own
    assert torch.all(pasted.logical_not() | (src == out.index.view(b, 1, 1).float()))  # pasted pixels are the partner's
    blocks = pasted.view(b, size // patch, patch, size // patch, patch).float()
    per_patch = blocks.mean(dim=(2, 4))
    assert torch.all((per_patch == 0) | (per_patch == 1)), "a patch is split between two images"
    self_pair = out.index == torch.arange(b)
    want_lam = torch.where(self_pair, 1.0, 1.0 - pasted.float().mean(dim=(1, 2)))
    torch.testing.assert_close(out.lam, want_lam)
    torch.testing.assert_close(out.targets, mix_targets(targets, out.index, out.lam))


def test_same_draw_gives_a_box_on_the_grid_that_plain_cutmix_would_draw_on_the_grid():
    # PatchCutMix on 28x28 with patch 4 pastes the 4x-upscaled box that CutMix draws on the 7x7 grid
    from lightning_mix.mixing import CutMix

    b = 4
    grid_probe = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 7, 7).contiguous()
    full_probe = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 28, 28).contiguous()
    targets = dense_targets(torch.arange(b), 4)
    cutmix = CutMix(alpha=1.0, mode="elem")
    small = cutmix(grid_probe, targets, generator=torch.Generator().manual_seed(5))
    big = PatchCutMix(alpha=1.0, patch_size=4, mode="elem")(
        full_probe, targets, generator=torch.Generator().manual_seed(5)
    )
    upscaled = small.inputs.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    torch.testing.assert_close(big.inputs, upscaled)
    torch.testing.assert_close(big.lam, small.lam)


def test_patch_size_must_divide_the_image():
    with pytest.raises(ValueError, match="patch_size=5 must divide"):
        PatchCutMix(patch_size=5)(torch.zeros(2, 1, 28, 28), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive"):
        PatchCutMix(patch_size=0)
    assert math.isclose(PatchCutMix(patch_size=7).alpha, 1.0)
