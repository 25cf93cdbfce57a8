"""Mask mixers copy pixels bit for bit: an inf or NaN in one image never reaches another image's pixels.

One rule for CutMix (every mode, 1D/2D/3D), FMix (binary, and the 0/1 parts of soft masks),
SaliencyMix and ResizeMix: every output pixel equals, bit for bit, the pixel of the image it is
taken from. Checked with one image full of inf/NaN values (and finite images with signed zeros,
which a 0/1 ``lerp`` would also change: ``-0.0`` becomes ``+0.0``).
"""

from __future__ import annotations

import pytest
import torch

from lightning_mix.mixing import CutMix, FMix, ResizeMix, SaliencyMix, dense_targets

MODES = ("batch", "pair", "elem")


def _poisoned(shape, value: float, bad: int = 2) -> torch.Tensor:
    """Random images (signed zeros sprinkled in) with image ``bad`` filled with ``value``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    x[x.abs() < 0.3] = -0.0
    x[bad] = value
    return x


def _check_bitwise_sources(x: torch.Tensor, out) -> None:
    """Each pixel of out.inputs is the same pixel of sample i or of its partner, bit for bit."""
    own = x.view(torch.int32)
    partner = x[out.index].view(torch.int32)
    got = out.inputs.view(torch.int32)
    assert bool(((got == own) | (got == partner)).all()), "a pixel is neither its own nor its partner's"


MIXERS = {
    "CutMix-2d": (lambda mode: CutMix(alpha=1.0, mode=mode), (8, 3, 16, 16)),
    "CutMix-1d": (lambda mode: CutMix(alpha=1.0, mode=mode), (8, 2, 40)),
    "CutMix-3d": (lambda mode: CutMix(alpha=1.0, mode=mode), (8, 1, 6, 7, 8)),
    "CutMix-wide-rows": (lambda mode: CutMix(alpha=1.0, mode=mode), (8, 3, 16, 96)),  # the row-gather path
    "FMix": (lambda mode: FMix(alpha=1.0, mode=mode), (8, 3, 16, 16)),
    "SaliencyMix": (lambda mode: SaliencyMix(alpha=1.0, mode=mode), (8, 3, 16, 16)),
}


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(MIXERS))
def test_mask_mixers_copy_pixels_bit_for_bit(name, mode, value):
    make, shape = MIXERS[name]
    mixer = make(mode)
    if name == "SaliencyMix":
        x = _poisoned(shape, 0.0)  # saliency of an inf image is undefined; poison after the peaks are taken
        x[2, :, 3:9, 4:10] = value
    else:
        x = _poisoned(shape, value)
    t = dense_targets(torch.arange(shape[0]) % 4, 4)
    for seed in range(12):
        out = mixer(x, t, generator=torch.Generator().manual_seed(seed))
        _check_bitwise_sources(x, out)
        clean = (out.index != 2) & (torch.arange(shape[0]) != 2)  # samples that never touch image 2
        assert torch.equal(out.inputs[clean].view(torch.int32), _rows(x, out, clean))
        assert bool(torch.isfinite(out.inputs[clean]).all())


def _rows(x, out, clean):
    """Expected pixels of the clean samples: each from itself or its partner (both finite)."""
    got = out.inputs[clean].view(torch.int32)
    own, partner = x[clean].view(torch.int32), x[out.index[clean]].view(torch.int32)
    return torch.where(got == own, own, partner)


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("mode", MODES)
def test_resizemix_keeps_own_pixels_bit_for_bit_outside_the_thumbnail(mode, value):
    """ResizeMix pastes a resized partner (new pixel values inside the thumbnail, by design);
    outside it every pixel is the sample's own, bit for bit, and nothing of image 2 leaks there."""
    x = _poisoned((8, 3, 16, 16), value)
    t = dense_targets(torch.arange(8) % 4, 4)
    mixer = ResizeMix(mode=mode)
    for seed in range(12):
        out = mixer(x, t, generator=torch.Generator().manual_seed(seed))
        got, own = out.inputs.view(torch.int32), x.view(torch.int32)
        for i in range(8):
            changed = (got[i] != own[i]).any(dim=0)  # (H, W)
            if int(out.index[i]) == i or not bool(changed.any()):
                continue
            rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
            box = torch.zeros_like(changed)
            box[int(rows.min()) : int(rows.max()) + 1, int(cols.min()) : int(cols.max()) + 1] = True
            assert torch.equal(changed | box, box), "pixels changed outside one rectangle"
            if int(out.index[i]) == 2 and i != 2:
                assert not bool(torch.isfinite(out.inputs[i][:, changed]).any())
            elif i != 2:
                assert bool(torch.isfinite(out.inputs[i]).all())


def test_soft_fmix_copies_weight_one_and_zero_pixels_and_blends_the_ramp():
    x = _poisoned((8, 1, 16, 16), float("inf"))
    t = dense_targets(torch.arange(8) % 4, 4)
    mixer = FMix(alpha=1.0, mode="elem", max_soft=0.2)
    out = mixer(x, t, generator=torch.Generator().manual_seed(0))
    own, partner = x, x[out.index]
    got = out.inputs
    # pixels equal to neither source are the blend of the ramp: finite wherever both sources are
    blended = (got.view(torch.int32) != own.view(torch.int32)) & (got.view(torch.int32) != partner.view(torch.int32))
    assert bool(blended.any()), "a soft mask should blend some pixels"
    both_finite = torch.isfinite(own) & torch.isfinite(partner)
    assert bool(torch.isfinite(got[both_finite]).all())
    clean = (out.index != 2) & (torch.arange(8) != 2)
    assert bool(torch.isfinite(got[clean]).all())
    # and away from the ramp, image 2's partner keeps its own pixels where its weight is 1
    lo = torch.minimum(own, partner)
    hi = torch.maximum(own, partner)
    ok = blended & both_finite
    assert bool(((got[ok] >= lo[ok] - 1e-6) & (got[ok] <= hi[ok] + 1e-6)).all())
