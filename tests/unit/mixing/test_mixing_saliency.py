"""SaliencyMix's saliency: OpenCV's spectral residual, batched in torch; peaks land on the salient patch.

Reference: OpenCV's ``cv2.saliency.StaticSaliencySpectralResidual`` (opencv-contrib, the test
extra), modules/saliency/src/staticSaliencySpectralResidual.cpp: resize to 64x64, log(1 + |F|),
3x3 mean with BORDER_DEFAULT (reflect-101), exp, inverse DFT, magnitude, 5x5 Gaussian (sigma 8),
squared, resized back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_mix.mixing import saliency_peaks, spectral_residual_saliency


def synthetic_images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """``n`` grey images: a smooth background (a gentle ramp and one slow wave) with one textured
    square patch (side size // 4, uniform noise) at a random place; returns images and (top, left, side)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, patches = [], []
    for _ in range(n):
        a, b, c = rng.uniform(-0.3, 0.3, 3)
        image = 0.5 + a * xx + b * yy + 0.1 * np.sin(2 * np.pi * (xx * rng.uniform(0.3, 1.0) + c))
        side = size // 4
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        image[top : top + side, left : left + side] += rng.uniform(-0.4, 0.4, (side, side))
        images.append(image.astype(np.float32))
        patches.append((top, left, side))
    return np.stack(images), patches


def hits(peaks, patches) -> int:
    return sum(int(top <= r < top + s and left <= c < left + s) for (r, c), (top, left, s) in zip(peaks, patches))


@pytest.mark.parametrize("size", [32, 96])
def test_saliency_peaks_fall_in_the_textured_patch(size):
    """Regression: replicated borders of the 3x3 log-spectrum mean put 48/48 peaks on the border at 32x32."""
    images, patches = synthetic_images(48, size)
    peaks = saliency_peaks(torch.from_numpy(images)[:, None]).tolist()
    assert hits(peaks, patches) >= 45
    on_border = sum(int(r in (0, size - 1) or c in (0, size - 1)) for r, c in peaks)
    assert on_border <= 4


@pytest.mark.parametrize("size", [32, 96])
def test_at_least_as_many_hits_as_opencv_spectral_residual(size):
    cv2 = pytest.importorskip("cv2")
    images, patches = synthetic_images(48, size)
    ours = hits(saliency_peaks(torch.from_numpy(images)[:, None]).tolist(), patches)
    detector = cv2.saliency.StaticSaliencySpectralResidual_create()
    theirs = []
    for image in images:
        ok, saliency = detector.computeSaliency(image)
        assert ok
        theirs.append(np.unravel_index(np.argmax(saliency), saliency.shape))
    assert ours >= hits(theirs, patches)


def test_map_equals_opencv_spectral_residual_at_the_working_size():
    """At 64x64 no resize is involved: the maps agree to float32 precision (normalised to max 1)."""
    cv2 = pytest.importorskip("cv2")
    images, _ = synthetic_images(6, 64, seed=1)
    ours = spectral_residual_saliency(torch.from_numpy(images)[:, None]).numpy()
    detector = cv2.saliency.StaticSaliencySpectralResidual_create()
    for image, mine in zip(images, ours):
        _, theirs = detector.computeSaliency(image)
        np.testing.assert_allclose(mine / mine.max(), theirs, atol=1e-4)
