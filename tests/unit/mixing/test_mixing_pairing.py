"""Label-based pairings (C-Mixup's label kernel, different/same class) and SaliencyMix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_mix.mixing import (
    CutMix,
    Mixup,
    SaliencyMix,
    dense_targets,
    label_kernel_probabilities,
    make_pairing,
    saliency_peaks,
    spectral_residual_saliency,
)


def _partner_counts(b, pairing, labels, draws, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    counts = np.zeros((b, b))
    for _ in range(draws):
        index = make_pairing(b, pairing, g, labels=labels, **kw)
        counts[np.arange(b), index.numpy()] += 1
    return counts


def test_label_kernel_probabilities_match_hand_computation():
    y = torch.tensor([0.0, 0.5, 2.0, -1.0])
    s = 0.8
    d2 = (y.view(-1, 1) - y.view(1, -1)).double() ** 2
    k = torch.exp(-d2 / (2 * s * s))
    k.fill_diagonal_(0)
    expected = k / k.sum(1, keepdim=True)
    torch.testing.assert_close(label_kernel_probabilities(y, s).double(), expected, atol=1e-6, rtol=1e-5)
    # (B, d) values: Euclidean distance
    yd = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    p = label_kernel_probabilities(yd, 2.0).double()
    w01, w02, w12 = np.exp(-25 / 8), np.exp(-1 / 8), np.exp(-18 / 8)
    assert p[0, 1].item() == pytest.approx(w01 / (w01 + w02), rel=1e-5)
    assert p[1, 2].item() == pytest.approx(w12 / (w01 + w12), rel=1e-5)


def test_label_kernel_empirical_distribution_matches_kernel():
    y = torch.tensor([0.0, 0.3, 0.9, 1.5, 1.6, 2.5])
    probs = label_kernel_probabilities(y, 1.0).double().numpy()
    draws = 3000
    counts = _partner_counts(6, "label_kernel", y, draws, bandwidth=1.0)
    assert np.all(np.diag(counts) == 0)  # never its own partner
    for i in range(6):
        keep = probs[i] > 0
        expected = probs[i, keep] / probs[i, keep].sum() * counts[i, keep].sum()
        p = scipy.stats.chisquare(counts[i, keep], expected).pvalue
        assert p > 1e-4, (i, counts[i], draws * probs[i])


def test_label_kernel_bandwidth_limits():
    y = torch.tensor([[0.0], [0.1], [5.0], [5.3], [9.0]])
    wide = label_kernel_probabilities(y, float("inf"))
    expected = (1 - torch.eye(5)) / 4
    torch.testing.assert_close(wide, expected)
    torch.testing.assert_close(label_kernel_probabilities(y, 1e6), expected)
    narrow = label_kernel_probabilities(y, 1e-4)
    nearest = torch.tensor([1, 0, 3, 2, 3])
    torch.testing.assert_close(narrow, torch.eye(5)[nearest])
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        assert torch.equal(make_pairing(5, "label_kernel", g, labels=y, bandwidth=1e-4), nearest)


def test_different_class_pairs_across_classes_uniformly():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    counts = _partner_counts(6, "different_class", labels, 1500)
    same = (labels.view(-1, 1) == labels.view(1, -1)).numpy()
    assert counts[same].sum() == 0
    for i in range(6):
        row = counts[i, ~same[i]]
        assert scipy.stats.chisquare(row).pvalue > 1e-4
    # dense (smoothed) targets work the same way: class = argmax
    dense = dense_targets(labels, 3, label_smoothing=0.1)
    index = make_pairing(6, "different_class", torch.Generator().manual_seed(1), labels=dense)
    assert torch.all(labels[index] != labels)


def test_different_class_falls_back_to_any_other_sample():
    labels = torch.zeros(4, dtype=torch.long)
    counts = _partner_counts(4, "different_class", labels, 400)
    assert np.all(np.diag(counts) == 0) and np.all(counts + np.eye(4) * 400 > 0)


def test_same_class_pairs_within_class_and_lone_samples_stay():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    counts = _partner_counts(6, "same_class", labels, 600)
    same = (labels.view(-1, 1) == labels.view(1, -1)).numpy()
    assert counts[~same].sum() == 0
    assert counts[5, 5] == 600  # class 2 has one sample: its own partner
    assert np.all(np.diag(counts)[:5] == 0)
    assert np.all(counts[3, 4] == 600) and scipy.stats.chisquare(counts[0, 1:3]).pvalue > 1e-4
    # through a mixer: the lone sample is unchanged and has lam = 1; targets stay one class
    x = torch.randn(6, 3, 8, 8)
    out = CutMix(mode="elem", pairing="same_class")(x, dense_targets(labels, 3), torch.Generator().manual_seed(0))
    assert torch.equal(out.inputs[5], x[5]) and out.lam[5] == 1
    assert torch.equal(out.targets, dense_targets(labels, 3))


def test_mixup_with_c_mixup_pairing_on_regression_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    y = torch.randn(32, 1, generator=g)
    mixer = Mixup(alpha=2.0, mode="elem", pairing="label_kernel", bandwidth=0.5)
    out = mixer(x, y, generator=torch.Generator().manual_seed(3))
    lam = out.lam.view(-1, 1)
    torch.testing.assert_close(out.inputs, lam * x + (1 - lam) * x[out.index])
    torch.testing.assert_close(out.targets, lam * y + (1 - lam) * y[out.index])
    assert torch.all(out.index != torch.arange(32))
    # partners are closer in label than random ones on average
    assert (y - y[out.index]).abs().mean() < 0.6 * (y.view(-1, 1) - y.view(1, -1)).abs().mean()
    with pytest.raises(ValueError, match="symmetric pairing"):
        Mixup(mode="pair", pairing="label_kernel")
    with pytest.raises(ValueError, match="pass labels"):
        make_pairing(4, "label_kernel")


# ---------------------------------------------------------------- SaliencyMix


def _blob_images(b=4, h=48, w=40, seed=0):
    """Low-contrast noise with one bright square per image at a known place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g) * 0.2
    centres = []
    for i in range(b):
        cy = int(torch.randint(8, h - 8, (1,), generator=g))
        cx = int(torch.randint(8, w - 8, (1,), generator=g))
        x[i, :, cy - 4 : cy + 4, cx - 4 : cx + 4] += 1.0
        centres.append((cy, cx))
    return x, torch.tensor(centres)


def test_spectral_residual_finds_the_odd_blob():
    x, centres = _blob_images(6)
    peaks = saliency_peaks(x)
    # the most salient pixel lies on (or next to) the 8x8 bright square
    assert torch.all((peaks - centres).abs() <= 6), (peaks, centres)
    sal = spectral_residual_saliency(x)
    assert sal.shape == (6, 48, 40) and sal.dtype == torch.float32


@pytest.mark.parametrize("shape", [(6, 3, 32, 32), (3, 1, 48, 40), (2, 3, 90, 100)])
def test_spectral_residual_matches_textbook_formulation(shape):
    """OpenCV's steps (staticSaliencySpectralResidual.cpp) written plainly: L = log(1 + |F|), a 3x3
    average pool with reflect-101 borders, exp(R + iP) with abs/angle/polar, |IFFT| blurred by a
    5x5 Gaussian convolution with reflect-101 borders, squared after the blur."""
    import torch.nn.functional as F

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    grey = F.interpolate(x.mean(1, keepdim=True), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    spec = torch.fft.fft2(grey)
    log_amp, phase = torch.log1p(spec.abs()), torch.angle(spec)
    residual = log_amp - F.avg_pool2d(F.pad(log_amp.unsqueeze(1), (1, 1, 1, 1), mode="reflect"), 3, stride=1)[:, 0]
    sal = torch.fft.ifft2(torch.exp(residual) * torch.exp(1j * phase)).abs()
    g = torch.exp(-((torch.arange(5.0) - 2) ** 2) / (2 * 8.0**2))
    kernel = (g.view(-1, 1) * g.view(1, -1)) / g.sum() ** 2
    sal = F.conv2d(F.pad(sal.unsqueeze(1), (2, 2, 2, 2), mode="reflect"), kernel.view(1, 1, 5, 5)) ** 2
    expected = F.interpolate(sal, size=shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    ours = spectral_residual_saliency(x)
    torch.testing.assert_close(ours / expected.amax(), expected / expected.amax(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_saliencymix_box_is_centred_on_partner_peak(mode):
    b, h, w = 8, 48, 40
    x, _ = _blob_images(b, h, w, seed=1)
    x = x.double() + 10 * torch.arange(1, b + 1, dtype=torch.float64).view(-1, 1, 1, 1)  # samples differ everywhere
    t = dense_targets(torch.arange(b) % 4, 4).double()
    mixer = SaliencyMix(alpha=1.0, mode=mode, pairing="random")
    peaks = saliency_peaks(x)
    checked = 0
    for seed in range(12):
        out = mixer(x, t, generator=torch.Generator().manual_seed(seed))
        lam = out.lam.view(-1, 1).double()
        torch.testing.assert_close(out.targets, lam * t + (1 - lam) * t[out.index])
        selfpaired = out.index == torch.arange(b)
        assert torch.equal(out.inputs[selfpaired], x[selfpaired]) and torch.all(out.lam[selfpaired] == 1)
        pasted = (out.inputs != x).any(1)  # (B, H, W)
        # pasted pixels are the partner's pixels at the same place
        partner = x[out.index]
        assert torch.equal(torch.where(pasted.unsqueeze(1), partner, x), out.inputs)
        # lam is the kept area
        torch.testing.assert_close(out.lam.double(), 1 - pasted.flatten(1).double().mean(1), atol=1e-6, rtol=0)
        rows, cols = pasted.any(2), pasted.any(1)  # (B, H), (B, W)
        assert torch.equal(pasted, rows.unsqueeze(2) & cols.unsqueeze(1))  # rectangles
        n_rows, n_cols = rows.sum(1), cols.sum(1)
        top, left = rows.float().argmax(1), cols.float().argmax(1)
        fits = (n_rows > 0) & (top > 0) & (top + n_rows < h) & (left > 0) & (left + n_cols < w)
        if mode == "batch":
            owner = out.index[:1].expand(b)
        elif mode == "pair":
            owner = torch.maximum(torch.arange(b), out.index)
        else:
            owner = out.index
        centre = torch.stack((top + n_rows // 2, left + n_cols // 2), dim=1)
        assert torch.equal(centre[fits], peaks[owner][fits]), (mode, centre[fits], peaks[owner][fits])
        checked += int(fits.sum())
    assert checked > 2


def test_saliencymix_accepts_uint8_and_is_seeded():
    x = (torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    t = dense_targets(torch.arange(6) % 2, 2)
    a = SaliencyMix(mode="elem")(x, t, generator=torch.Generator().manual_seed(5))
    b = SaliencyMix(mode="elem")(x, t, generator=torch.Generator().manual_seed(5))
    assert a.inputs.dtype == torch.uint8
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        SaliencyMix()(torch.zeros(4, 3, 8), torch.eye(4))
