"""Batch mixers against the mixing contract, timm and scipy.

The central check recovers each sample's mask from the output: inputs are built so that ``x`` and
``x[index]`` differ everywhere, so ``mask = (out - x[index]) / (x - x[index])`` is well defined
and must satisfy ``out == mask * x + (1 - mask) * x[index]``, ``lam == mask.mean()`` and the
target rule ``t_out == lam * t + (1 - lam) * t[index]``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from lightning_mix.mixing import (
    CutMix,
    FMix,
    MidpointMixup,
    MixedBatch,
    Mixup,
    RandomChoice,
    ResizeMix,
    SaliencyMix,
    box_corners,
    box_masks,
    dense_targets,
    mix_targets,
    paste_boxes,
)
from lightning_mix.mixing.mixers import resize_paste

MODES = ("batch", "pair", "elem")


def make_batch(shape, num_classes=5, seed=0, dtype=torch.float64):
    """Inputs whose samples differ from each other at every element, and one-hot targets."""
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    offsets = 10.0 * torch.arange(1, b + 1, dtype=torch.float64).view(-1, *([1] * (len(shape) - 1)))
    x = (torch.rand(shape, generator=g, dtype=torch.float64) + offsets).to(dtype)
    labels = torch.randint(0, num_classes, (b,), generator=g)
    return x, dense_targets(labels, num_classes, dtype=torch.float64)


def recover_mask(x: torch.Tensor, out: MixedBatch) -> torch.Tensor:
    """Per-element weight of the sample's own input; NaN where the sample is its own partner."""
    partner = x[out.index]
    return (out.inputs.double() - partner.double()) / (x.double() - partner.double())


def check_contract(x, t, out, mask_based: bool, binary: bool = True, moved: bool = False):
    b = x.shape[0]
    assert isinstance(out, MixedBatch)
    assert out.inputs.shape == x.shape and out.inputs.dtype == x.dtype and out.inputs.device == x.device
    assert out.index.dtype == torch.long and out.index.shape == (b,)
    assert out.lam.shape == (b,) and out.lam.is_floating_point()
    assert torch.all((out.lam >= 0) & (out.lam <= 1))
    selfpaired = out.index == torch.arange(b)
    # a sample paired with itself is unchanged and has lam = 1
    assert torch.equal(out.inputs[selfpaired], x[selfpaired])
    assert torch.all(out.lam[selfpaired] == 1)
    if moved:  # ResizeMix: pasted pixels come from other places of the partner (checked elsewhere)
        kept = (out.inputs == x).all(dim=1, keepdim=True).expand_as(x)[~selfpaired]
        partner_id = out.index[~selfpaired].view(-1, *([1] * (x.dim() - 1))).double()
        pasted = out.inputs[~selfpaired].double()
        # make_batch puts sample k's values in [10 (k + 1), 10 (k + 1) + 1)
        from_partner = (pasted >= 10 * (partner_id + 1)) & (pasted < 10 * (partner_id + 1) + 1)
        assert torch.all(kept | from_partner)
        torch.testing.assert_close(kept.flatten(1).double().mean(1), out.lam[~selfpaired].double(), atol=1e-6, rtol=0)
        lam_all = out.lam.double().view(-1, 1)
        torch.testing.assert_close(out.targets.double(), lam_all * t + (1 - lam_all) * t[out.index], atol=1e-6, rtol=0)
        return kept.double()
    mask = recover_mask(x, out)[~selfpaired]
    lam = out.lam[~selfpaired].double()
    partner = x[out.index][~selfpaired].double()
    own = x[~selfpaired].double()
    # out == mask * x + (1 - mask) * x[index]
    torch.testing.assert_close(out.inputs[~selfpaired].double(), mask * own + (1 - mask) * partner)
    if mask_based:
        # one spatial mask shared by all channels
        torch.testing.assert_close(mask, mask[:, :1].expand_as(mask), atol=1e-9, rtol=0)
        if binary:
            assert torch.all((mask.abs() < 1e-9) | ((mask - 1).abs() < 1e-9))
        else:
            assert torch.all((mask > -1e-6) & (mask < 1 + 1e-6))
        # lam is the area actually kept (area correction)
        torch.testing.assert_close(mask.flatten(1).mean(1), lam, atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(mask, lam.view(-1, *([1] * (x.dim() - 1))).expand_as(mask), atol=1e-9, rtol=0)
    # targets follow the contract (independent float64 computation)
    lam_all = out.lam.double().view(-1, 1)
    expected = lam_all * t + (1 - lam_all) * t[out.index]
    torch.testing.assert_close(out.targets.double(), expected, atol=1e-6, rtol=0)
    return mask


def check_mode(out, mode, mask=None):
    b = out.lam.shape[0]
    real = out.index != torch.arange(b)
    lam = out.lam[real]
    if mode == "batch":
        assert torch.all(lam == lam[0])
    elif mode == "pair":
        assert torch.equal(out.lam, out.lam[out.index])
        assert torch.equal(out.index[out.index], torch.arange(b))
    else:
        assert lam.unique().numel() > 1, "elem mode must draw a lam per sample"


# (factory, input shape, mask-based, binary mask)
CASES = {
    "mixup-2d": (lambda m: Mixup(alpha=1.0, mode=m), (7, 3, 6, 5), False, True),
    "mixup-features": (lambda m: Mixup(alpha=0.4, mode=m), (8, 11), False, True),
    "cutmix-1d": (lambda m: CutMix(alpha=1.0, mode=m), (7, 2, 20), True, True),
    "cutmix-2d": (lambda m: CutMix(alpha=1.0, mode=m), (8, 3, 12, 10), True, True),
    "cutmix-3d": (lambda m: CutMix(alpha=1.0, mode=m), (7, 2, 6, 7, 8), True, True),
    "fmix-1d": (lambda m: FMix(alpha=1.0, mode=m), (7, 2, 32), True, True),
    "fmix-2d": (lambda m: FMix(alpha=1.0, mode=m), (8, 3, 16, 12), True, True),
    "fmix-3d": (lambda m: FMix(alpha=1.0, mode=m), (7, 1, 6, 8, 5), True, True),
    "fmix-soft": (lambda m: FMix(alpha=1.0, max_soft=0.1, mode=m), (8, 3, 16, 16), True, False),
    "resizemix": (lambda m: ResizeMix(mode=m), (7, 3, 16, 12), True, "moved"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_contract_every_mixer_and_mode(case, mode):
    factory, shape, mask_based, binary = CASES[case]
    mixer = factory(mode)
    for seed in range(3):
        x, t = make_batch(shape, seed=seed)
        out = mixer(x, t, generator=torch.Generator().manual_seed(seed))
        moved = binary == "moved"
        mask = check_contract(x, t, out, mask_based, binary, moved)
        check_mode(out, mode)
        if moved:
            mask = (out.inputs == x).all(dim=1, keepdim=True).double()
            real = out.index != torch.arange(shape[0])
            mask[~real] = mask[real][:1]
        if mask_based and mode == "batch":
            # one mask for the whole batch
            torch.testing.assert_close(mask, mask[:1].expand_as(mask), atol=1e-9, rtol=0)
        if mask_based and mode == "pair":
            # the pair shares its mask: the partner receives the complementary pixels
            real = out.index != torch.arange(shape[0])
            full = mask if moved else recover_mask(x, out)
            torch.testing.assert_close(full[real], full[out.index][real])


def _cutmix_batch_reference(mixer, x, t, seed):
    """The tensor (device) path of CutMix's batch mode, from public pieces and the same draws."""
    g = torch.Generator().manual_seed(seed)
    index, lam = mixer.draw(x.shape[0], g, "cpu", t)
    spatial = x.shape[2:]
    sizes = torch.tensor(list(spatial), dtype=torch.float64)
    centres = torch.floor(torch.rand((1, len(spatial)), generator=g, dtype=torch.float64) * sizes).long()
    lo, hi = box_corners(lam[:1], centres, spatial)
    volume = float((hi - lo).prod())
    return paste_boxes(x, index, lo, hi), 1.0 - volume / math.prod(spatial), lam


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("shape", [(6, 2, 30), (7, 3, 12, 10), (6, 1, 5, 6, 7)])
def test_cutmix_cpu_box_copy_equals_masked_path(shape, dtype):
    """Batch mode on CPU copies the box by slicing; it must equal the device (mask) path."""
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255).to(dtype)
    t = dense_targets(torch.arange(shape[0]) % 3, 3)
    for correct_lam in (True, False):
        mixer = CutMix(correct_lam=correct_lam)
        for seed in range(25):
            out = mixer(x, t, generator=torch.Generator().manual_seed(seed))
            expected, area_lam, raw_lam = _cutmix_batch_reference(mixer, x, t, seed)
            assert torch.equal(out.inputs, expected)
            real = out.index != torch.arange(shape[0])
            wanted = torch.full((shape[0],), area_lam) if correct_lam else raw_lam
            torch.testing.assert_close(out.lam[real], wanted[real].float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("pairing", ["flip", "random"])
def test_resizemix_cpu_box_copy_equals_gather_path(dtype, pairing):
    x = (torch.rand(7, 3, 23, 17, generator=torch.Generator().manual_seed(0)) * 255).to(dtype)
    t = dense_targets(torch.arange(7) % 3, 3)
    mixer = ResizeMix(pairing=pairing)
    for seed in range(6):
        out = mixer(x, t, generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        index, lam = mixer.draw(7, g, "cpu", t)  # self-pairs get lam 1, so tau 0: nothing pasted
        expected, _ = resize_paste(x, index, (1.0 - lam).clamp_min(0).sqrt(), g, "batch")
        # F.interpolate (fast path) and grid_sample (general path) agree to float rounding
        atol = 1.0 if dtype == torch.uint8 else 1e-3
        torch.testing.assert_close(out.inputs.float(), expected.float(), atol=atol, rtol=1e-5)
        assert torch.equal(out.index, index)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_resizemix_thumbnail_is_the_bilinear_resize_of_the_partner(mode, dtype):
    """Regression (nearest-neighbour sampling aliased): the pasted thumbnail is
    F.interpolate(partner, (h, w), mode="bilinear", align_corners=False), mmpretrain's ResizeMix
    resize; every pixel outside it is the sample's own."""
    b, height, width = 6, 40, 36
    x = (torch.rand(b, 3, height, width, generator=torch.Generator().manual_seed(1)) * 255).to(dtype)
    index = torch.tensor([5, 4, 3, 2, 1, 0])
    tau = torch.tensor([0.1, 0.35, 0.5, 0.8, 0.23, 0.61]) if mode == "elem" else torch.full((b,), 0.3)
    out, lam = resize_paste(x, index, tau, torch.Generator().manual_seed(7), mode)
    n = b if mode == "elem" else 1
    corners = torch.rand((n, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64).expand(b, 2)
    for i in range(b):
        h, w = max(round(float(tau[i]) * height), 1), max(round(float(tau[i]) * width), 1)
        top, left = int(corners[i, 0] * (height - h + 1)), int(corners[i, 1] * (width - w + 1))
        partner = x[index[i] : index[i] + 1].float()
        thumb = F.interpolate(partner, size=(h, w), mode="bilinear", align_corners=False)[0]
        if dtype == torch.uint8:
            thumb = thumb.round()
        got = out[i, :, top : top + h, left : left + w].float()
        torch.testing.assert_close(got, thumb, atol=1.0 if dtype == torch.uint8 else 1e-3, rtol=1e-5)
        outside = torch.ones(height, width, dtype=torch.bool)
        outside[top : top + h, left : left + w] = False
        assert torch.equal(out[i][:, outside], x[i][:, outside])
        assert abs(float(lam[i]) - (1 - h * w / (height * width))) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("spatial", [(19,), (9, 13), (5, 6, 7)])
@pytest.mark.parametrize("shared", [False, True])
def test_paste_boxes_equals_where_with_box_mask(spatial, dtype, shared):
    """The per-dim blend passes give exactly where(keep, x, x[index]) with the full box mask."""
    g = torch.Generator().manual_seed(len(spatial))
    b = 6
    x = (torch.rand((b, 2, *spatial), generator=g) * 200).to(dtype)
    index = torch.randperm(b, generator=g)
    n = 1 if shared else b
    lam = torch.rand(n, generator=g)
    centres = torch.stack([torch.randint(0, s, (n,), generator=g) for s in spatial], dim=1)
    keep, lam_corrected = box_masks(lam, centres, spatial)
    lo, hi = box_corners(lam, centres, spatial)
    out = paste_boxes(x, index, lo, hi)
    assert torch.equal(out, torch.where(keep, x, x[index]))
    torch.testing.assert_close(lam_corrected, keep.flatten(1).float().mean(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("spatial", [(9, 70), (4, 3, 30), (7, 64)])
@pytest.mark.parametrize("shared", [False, True])
def test_paste_boxes_row_gather_equals_where_with_box_mask(spatial, dtype, shared):
    """Rows of 64+ elements take the row-gather path; it must equal where(keep, x, x[index]) too,
    and the sample-gather path on a non-contiguous copy of the same batch."""
    g = torch.Generator().manual_seed(7 + len(spatial))
    b = 6
    x = (torch.rand((b, 3, *spatial), generator=g) * 200).to(dtype)
    n = 1 if shared else b
    for index in (torch.randperm(b, generator=g), torch.arange(b - 1, -1, -1), torch.tensor([0, 2, 1, 3, 5, 4])):
        lam = torch.rand(n, generator=g)
        centres = torch.stack([torch.randint(0, s, (n,), generator=g) for s in spatial], dim=1)
        keep, _ = box_masks(lam, centres, spatial)
        lo, hi = box_corners(lam, centres, spatial)
        out = paste_boxes(x, index, lo, hi)
        assert torch.equal(out, torch.where(keep, x, x[index]))
        strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, not contiguous
        assert not strided.is_contiguous()
        assert torch.equal(paste_boxes(strided, index, lo, hi), out)
        assert torch.equal(x, strided)  # inputs untouched


@pytest.mark.parametrize("pairing", ["flip", "roll", "random", "label_kernel", "different_class", "same_class"])
@pytest.mark.parametrize("batch_size", [2, 3, 6, 7])
def test_self_pairs_get_lam_one_whatever_the_pairing(pairing, batch_size):
    """Skipping the self-pair check for rules that cannot pair a sample with itself must not lose
    a self pair: every sample paired with itself has lam = 1, and the rest keep their draw."""
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 0][:batch_size])
    targets = dense_targets(labels, 3)
    for mixer in (Mixup(mode="elem", pairing=pairing), CutMix(mode="elem", pairing=pairing)):
        for seed in range(5):
            index, lam = mixer.draw(batch_size, torch.Generator().manual_seed(seed), labels=targets)
            own = index == torch.arange(batch_size)
            assert torch.all(lam[own] == 1.0)
            x = torch.rand(batch_size, 2, 5, 6, dtype=torch.float64)
            out = mixer(x, targets, torch.Generator().manual_seed(seed))
            assert torch.all(out.lam[out.index == torch.arange(batch_size)] == 1.0)
            assert torch.equal(out.inputs[own], x[own])


def test_cutmix_mask_is_a_clipped_box():
    x, t = make_batch((64, 1, 9, 13))
    out = CutMix(mode="elem")(x, t, generator=torch.Generator().manual_seed(1))
    mask = recover_mask(x, out)[:, 0].round()
    pasted = mask == 0
    rows, cols = pasted.any(2), pasted.any(1)
    # the pasted region is exactly the product of its row and column extents (a rectangle) ...
    assert torch.equal(pasted, rows.unsqueeze(2) & cols.unsqueeze(1))
    # ... and each extent is one contiguous run
    for extent in (rows, cols):
        n = extent.sum(1)
        first = extent.float().argmax(1)
        pos = torch.arange(extent.shape[1])
        expect = (pos >= first.view(-1, 1)) & (pos < (first + n).view(-1, 1))
        assert torch.equal(extent, expect)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_box_matches_timm_rand_bbox(seed):
    from timm.data.mixup import cutmix_bbox_and_lam

    shape = (4, 3, 37, 29)
    rng = np.random.default_rng(seed)
    lam = rng.beta(1.0, 1.0, size=20).astype(np.float32)
    for value in lam:
        np.random.seed(seed)
        (yl, yh, xl, xh), timm_lam = cutmix_bbox_and_lam(shape, float(value), correct_lam=True)
        np.random.seed(seed)  # replay timm's centre draws
        cy, cx = np.random.randint(0, shape[-2]), np.random.randint(0, shape[-1])
        keep, ours = box_masks(torch.tensor([value]), torch.tensor([[cy, cx]]), shape[-2:])
        expected = torch.ones(shape[-2:], dtype=torch.bool)
        expected[yl:yh, xl:xh] = False
        assert torch.equal(keep[0, 0], expected)
        assert ours.item() == pytest.approx(timm_lam, abs=1e-6)


def test_mixup_batch_mode_matches_timm():
    from timm.data import Mixup as TimmMixup

    x, _ = make_batch((6, 3, 8, 8), dtype=torch.float32)
    labels = torch.tensor([0, 3, 1, 4, 2, 2])
    np.random.seed(0)
    timm = TimmMixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode="batch", label_smoothing=0.1, num_classes=5)
    timm_x, timm_t = timm(x.clone(), labels)
    # recover timm's lam from its targets: the true class of sample 0 gets lam*on + (1-lam)*off...
    ours_t0 = dense_targets(labels, 5, label_smoothing=0.1)
    flip = torch.arange(6).flip(0)
    # solve timm_t = lam * t + (1 - lam) * t[flip] for lam on an entry where t and t[flip] differ
    diff = ours_t0 - ours_t0[flip]
    i, j = torch.nonzero(diff.abs() > 0)[0]
    lam = ((timm_t[i, j] - ours_t0[flip][i, j]) / diff[i, j]).item()
    lam_t = torch.full((6,), lam)
    torch.testing.assert_close(mix_targets(ours_t0, flip, lam_t), timm_t)
    mixed, _ = Mixup(mode="batch").mix_inputs(x, flip, lam_t, None)
    torch.testing.assert_close(mixed, timm_x)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_dense_targets_and_mix_match_timm_mixup_target(smoothing):
    from timm.data.mixup import mixup_target

    labels = torch.tensor([3, 0, 9, 9, 1, 4, 7, 2])
    flip = torch.arange(8).flip(0)
    for lam in (1.0, 0.73, 0.5, 0.0):
        expected = mixup_target(labels, 10, lam=lam, smoothing=smoothing)
        ours = mix_targets(dense_targets(labels, 10, label_smoothing=smoothing), flip, torch.full((8,), lam))
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
@pytest.mark.parametrize("mixer_cls", [Mixup, CutMix, FMix])
def test_lam_draws_follow_beta(alpha, mixer_cls):
    """The Beta draw (before area correction) has Beta(alpha, alpha)'s mean and variance."""
    mixer = mixer_cls(alpha=alpha, mode="elem")
    _, lam = mixer.draw(20000, generator=torch.Generator().manual_seed(3))
    lam = lam.double().numpy()
    ref = scipy.stats.beta(alpha, alpha)
    se_mean = math.sqrt(ref.var() / lam.size)
    assert abs(lam.mean() - ref.mean()) < 5 * se_mean
    # variance of the sample variance: (mu4 - sigma^4) / n
    mu4 = ref.moment(4) - 4 * ref.mean() * ref.moment(3) + 6 * ref.mean() ** 2 * ref.moment(2) - 3 * ref.mean() ** 4
    se_var = math.sqrt((mu4 - ref.var() ** 2) / lam.size)
    assert abs(lam.var() - ref.var()) < 5 * se_var


def test_cutmix_corrected_lam_statistics():
    """Area-corrected lam of unclipped boxes equals the draw up to pixel rounding; clipping only raises it."""
    mixer = CutMix(alpha=1.0, mode="elem")
    g = torch.Generator().manual_seed(0)
    x, t = make_batch((512, 1, 64, 64), dtype=torch.float32)
    index, lam_draw = mixer.draw(512, torch.Generator().manual_seed(0))
    out = mixer(x, t, generator=g)
    assert torch.equal(out.index, index)
    # same generator stream: the draw is the first thing __call__ does
    assert torch.all(out.lam >= lam_draw - 2 * 64 / 64**2 - 1e-6)
    nocorr = CutMix(alpha=1.0, mode="elem", correct_lam=False)(x, t, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nocorr.lam, lam_draw)


def test_fmix_binary_mask_mean_is_lam_within_one_element():
    mixer = FMix(alpha=1.0, mode="elem")
    shape = (32, 1, 15, 17)
    x, t = make_batch(shape)
    _, lam_draw = mixer.draw(32, torch.Generator().manual_seed(5))
    out = mixer(x, t, generator=torch.Generator().manual_seed(5))
    n = 15 * 17
    assert torch.all((out.lam - lam_draw).abs() <= 1.0 / n + 1e-6)


def test_resizemix_pastes_a_bilinear_resized_partner():
    x, t = make_batch((16, 3, 20, 24))
    out = ResizeMix(mode="elem")(x, t, generator=torch.Generator().manual_seed(2))
    mask = recover_mask(x, out)[:, 0].round()
    for i in range(16):
        j = int(out.index[i])
        if j == i:
            continue
        pasted = mask[i] == 0
        rows = torch.nonzero(pasted.any(1)).flatten()
        cols = torch.nonzero(pasted.any(0)).flatten()
        h, w = len(rows), len(cols)
        assert pasted.sum() == h * w
        assert out.lam[i].item() == pytest.approx(1 - h * w / (20 * 24), abs=1e-6)
        thumb = F.interpolate(x[j : j + 1], size=(h, w), mode="bilinear", align_corners=False)[0]
        patch = out.inputs[i][:, rows[0] : rows[0] + h, cols[0] : cols[0] + w]
        torch.testing.assert_close(patch, thumb, atol=1e-3, rtol=1e-5)


def test_resizemix_scale_bounds_lam():
    mixer = ResizeMix(scale=(0.3, 0.5), mode="elem")
    x, t = make_batch((200, 1, 40, 40), dtype=torch.float32)
    out = mixer(x, t, generator=torch.Generator().manual_seed(0))
    pasted = 1 - out.lam
    assert pasted.min() >= (12 / 40) ** 2 - 1e-6 and pasted.max() <= (20 / 40) ** 2 + 1e-6


def test_midpoint_mixup_is_half_half():
    x, t = make_batch((5, 3, 4, 4))
    out = MidpointMixup()(x, t)
    assert torch.equal(out.index, torch.tensor([4, 0, 1, 2, 3]))  # roll: no sample paired with itself
    assert torch.all(out.lam == 0.5)
    torch.testing.assert_close(out.inputs, 0.5 * (x + x[out.index]))


@pytest.mark.parametrize(
    "mixer",
    [
        Mixup(mode="elem"),
        CutMix(mode="pair"),
        FMix(),
        FMix(max_soft=0.2, mode="elem"),
        ResizeMix(mode="elem"),
        MidpointMixup(),
        SaliencyMix(mode="elem"),
    ],
    ids=repr,
)
def test_batch_of_one_is_unchanged(mixer):
    x, t = make_batch((1, 3, 8, 8))
    out = mixer(x, t, generator=torch.Generator().manual_seed(0))
    assert out.inputs is x and out.targets is t
    assert out.index.tolist() == [0] and out.lam.tolist() == [1.0]


@pytest.mark.parametrize("batch_size", [3, 5, 9])
@pytest.mark.parametrize("pairing", ["flip", "roll", "random"])
def test_odd_batches(batch_size, pairing):
    x, t = make_batch((batch_size, 2, 8, 8))
    for mixer in (Mixup(mode="elem", pairing=pairing), CutMix(mode="elem", pairing=pairing)):
        out = mixer(x, t, generator=torch.Generator().manual_seed(batch_size))
        check_contract(x, t, out, mask_based=isinstance(mixer, CutMix))
        assert sorted(out.index.tolist()) == list(range(batch_size))  # a permutation
    if pairing != "roll":
        out = Mixup(mode="pair", pairing=pairing)(x, t, generator=torch.Generator().manual_seed(0))
        check_contract(x, t, out, mask_based=False)
        check_mode(out, "pair")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_float_dtypes_preserved(dtype):
    x, t = make_batch((6, 3, 8, 8), dtype=dtype)
    for mixer in (Mixup(mode="elem"), CutMix(mode="elem"), FMix(max_soft=0.1), ResizeMix()):
        out = mixer(x, t.float(), generator=torch.Generator().manual_seed(0))
        assert out.inputs.dtype == dtype and out.targets.dtype == torch.float32
    # Mixup reports the lam its inputs really got (rounded to the inputs' precision)
    out = Mixup(mode="elem")(x, t.float(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.lam.to(dtype).float(), out.lam)
    assert torch.equal(out.inputs, torch.lerp(x[out.index], x, out.lam.to(dtype).view(-1, 1, 1, 1)))


@pytest.mark.parametrize("mixer", [CutMix(mode="elem"), FMix(mode="pair")], ids=repr)
def test_mask_mixers_accept_uint8(mixer):
    """(ResizeMix resamples its thumbnail: its uint8 case is test_resizemix_thumbnail_is_the_bilinear_resize...)"""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)
    t = dense_targets(torch.arange(6) % 3, 3)
    out = mixer(x, t, generator=torch.Generator().manual_seed(1))
    assert out.inputs.dtype == torch.uint8
    # every pixel is copied from the sample or its partner, never interpolated
    ref = mixer(x.double() + 1000 * torch.arange(6).view(-1, 1, 1, 1), t, generator=torch.Generator().manual_seed(1))
    own = ref.inputs.double() - 1000 * torch.arange(6).view(-1, 1, 1, 1)
    keep = own == x.double()
    pasted = ref.inputs.double() - 1000 * out.index.view(-1, 1, 1, 1)
    expected = torch.where(keep, x, pasted.round().to(torch.uint8))
    assert torch.equal(out.inputs, expected)
    assert torch.equal(out.lam, ref.lam)


@pytest.mark.parametrize("mixer", [Mixup(), MidpointMixup(), FMix(max_soft=0.1)], ids=repr)
def test_interpolating_mixers_reject_integer_inputs(mixer):
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="floating-point inputs"):
        mixer(x, torch.eye(4))


def test_wrong_shapes_and_options_are_explained():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ResizeMix()(torch.zeros(4, 3, 8), torch.eye(4))
    with pytest.raises(ValueError, match="channels first"):
        CutMix()(torch.zeros(4, 8), torch.eye(4))
    with pytest.raises(ValueError, match="batch size 4 but targets have 3"):
        Mixup()(torch.zeros(4, 8), torch.eye(3))
    with pytest.raises(ValueError, match="symmetric pairing"):
        Mixup(mode="pair", pairing="roll")
    with pytest.raises(ValueError, match="alpha must be positive"):
        CutMix(alpha=0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        FMix(mode="sample")
    with pytest.raises(ValueError, match="dense floating-point"):
        Mixup()(torch.zeros(4, 8), torch.arange(4))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: Mixup(mode="elem", pairing="random"),
        lambda: CutMix(mode="pair", pairing="random"),
        lambda: FMix(mode="elem", max_soft=0.1),
        lambda: ResizeMix(mode="pair"),
        lambda: RandomChoice([Mixup(0.8), CutMix(1.0)]),
        lambda: SaliencyMix(mode="elem", pairing="random"),
    ],
)
def test_seeded_generator_reproduces(factory):
    x, t = make_batch((8, 3, 16, 16), dtype=torch.float32)
    runs = [factory()(x, t, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0].inputs, runs[2].inputs)


def test_random_choice_follows_weights():
    chooser = RandomChoice([Mixup(), CutMix(), FMix()], weights=[1.0, 3.0, 0.0])
    g = torch.Generator().manual_seed(0)
    picks = np.bincount([chooser.choose(g) for _ in range(4000)], minlength=3)
    assert picks[2] == 0
    # binomial(4000, 0.25): sd = 27.4
    assert abs(picks[0] - 1000) < 5 * 27.4
    # the batch goes to the chosen mixer, fed from the same stream
    x, t = make_batch((6, 3, 8, 8), dtype=torch.float32)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    out = chooser(x, t, generator=g1)
    chosen = chooser.mixers[chooser.choose(g2)]
    ref = chosen(x, t, generator=g2)
    assert torch.equal(out.inputs, ref.inputs) and torch.equal(out.lam, ref.lam)
    with pytest.raises(ValueError, match="non-negative"):
        RandomChoice([Mixup()], weights=[1.0, 2.0])


def test_draw_matches_call_for_mixup():
    """``draw`` is what ``__call__`` uses, so layer-level methods get the same partners and lam."""
    x, t = make_batch((10, 4), dtype=torch.float32)
    mixer = Mixup(alpha=2.0, mode="elem", pairing="random")
    index, lam = mixer.draw(10, generator=torch.Generator().manual_seed(9))
    out = mixer(x, t, generator=torch.Generator().manual_seed(9))
    assert torch.equal(index, out.index) and torch.equal(lam, out.lam)
    torch.testing.assert_close(out.inputs, torch.lerp(x[index], x, lam.view(-1, 1)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_device_and_generator(mode):
    for factory in (Mixup, CutMix, FMix, ResizeMix):
        mixer = factory(mode=mode)
        x, t = make_batch((8, 3, 16, 16), dtype=torch.float32)
        x, t = x.cuda(), t.cuda()
        runs = [mixer(x, t, generator=torch.Generator("cuda").manual_seed(1)) for _ in range(2)]
        out = runs[0]
        assert out.inputs.device.type == "cuda" and out.lam.device.type == "cuda"
        assert out.index.device.type == "cuda" and out.targets.device.type == "cuda"
        assert all(torch.equal(a, b) for a, b in zip(*runs))
        check_contract(x.cpu(), t.cpu(), MixedBatch(*(v.cpu() for v in out)), mask_based=factory is not Mixup)
