"""PuzzleMix's adversarial step (torch layer): hand-worked values, bounds, the authors' rule, given sources."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "references"))
from puzzlemix_authors import authors_adversarial_noise, authors_adversarial_start, authors_perturbed_sources

from lightning_mix.mixing.puzzle_adversarial import PixelScale, fgsm_perturbation, perturb, random_start
from lightning_mix.mixing.puzzlemix import PuzzleMixer

EPS = 10 / 255


def test_zero_start_gives_eps_times_the_gradient_sign():
    gradient = torch.tensor([[[[0.3, -2.0], [0.0, 1e-9]]]])
    noise = fgsm_perturbation(torch.zeros_like(gradient), gradient, EPS, coef=1.0)
    expected = torch.tensor([[[[EPS, -EPS], [0.0, EPS]]]])
    torch.testing.assert_close(noise, expected, rtol=0, atol=0)


def test_start_overshoot_clamp_and_coef_by_hand():
    # start + 12/255 * sign(g), clamped to +-10/255, times coef 0.5
    start = torch.tensor([-5.0, 3.0, -10.0, 4.0]) / 255
    gradient = torch.tensor([1.0, -1.0, 1.0, 0.0])
    noise = fgsm_perturbation(start, gradient, EPS, coef=0.5)
    expected = 0.5 * torch.tensor([7.0, -9.0, 2.0, 4.0]) / 255
    torch.testing.assert_close(noise, expected)
    # wherever g != 0 the noise points along g, whatever the start
    assert torch.equal(noise[:3].sign(), gradient[:3].sign())


def test_random_start_and_perturbation_stay_in_the_pixel_range():
    pixels = torch.tensor([0.0, 1.0, 0.5, 0.01]).repeat(500).view(1, 1, 40, 50)
    start = random_start(pixels, EPS, torch.Generator().manual_seed(0))
    assert start.abs().max() <= EPS + 1e-7
    assert ((pixels + start) >= 0).all() and ((pixels + start) <= 1).all()
    assert (start[pixels == 0] >= 0).all() and (start[pixels == 1] <= 0).all()
    noise = fgsm_perturbation(start, torch.randn(pixels.shape, generator=torch.Generator().manual_seed(1)), EPS, 1.0)
    out = perturb(pixels, noise)
    assert out.min() >= 0 and out.max() <= 1
    assert (out - pixels).abs().max() <= EPS + 1e-7


def test_matches_the_authors_rule_on_normalised_images():
    g = torch.Generator().manual_seed(3)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    scale = PixelScale(mean, std)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = (torch.rand(4, 3, 8, 8, generator=g) - m) / s
    grad = torch.randn(4, 3, 8, 8, generator=g)
    index, coef = torch.tensor([2, 0, 3, 1]), 0.37
    ours_start = random_start(scale.to_pixels(x), EPS, torch.Generator().manual_seed(9))
    uniform = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(9)) - 1) * EPS  # the same draw
    their_start, their_probe = authors_adversarial_start(x, uniform, 10.0, m, s)
    torch.testing.assert_close(ours_start, their_start)
    torch.testing.assert_close(scale.from_pixels(scale.to_pixels(x) + ours_start), their_probe)
    noise = fgsm_perturbation(ours_start, grad, EPS, coef)
    torch.testing.assert_close(noise, authors_adversarial_noise(their_start, grad, 10.0, coef))
    perturbed = scale.from_pixels(perturb(scale.to_pixels(x), noise))
    for own, partner in ((1, 0), (0, 1), (1, 1)):
        their_own, their_partner = authors_perturbed_sources(x, index, noise, own, partner, m, s)
        torch.testing.assert_close(perturbed if own else x, their_own, atol=1e-6, rtol=0)
        torch.testing.assert_close((perturbed if partner else x)[index], their_partner, atol=1e-6, rtol=0)


def test_pixel_scale_round_trip_and_errors():
    scale = PixelScale([0.5], [0.25])
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(scale.from_pixels(scale.to_pixels(x)), x)
    torch.testing.assert_close(scale.to_pixels(x), x * 0.25 + 0.5)
    assert PixelScale().to_pixels(x) is not None and torch.equal(PixelScale().to_pixels(x), x)
    with pytest.raises(ValueError, match="go together"):
        PixelScale([0.5], None)
    with pytest.raises(ValueError, match="one value per channel"):
        PixelScale([0.5, 0.5], [0.2])
    with pytest.raises(ValueError, match="must be positive"):
        PixelScale([0.5], [0.0])
    with pytest.raises(ValueError, match="images have 3 channels"):
        PixelScale([0.1, 0.2], [0.3, 0.3]).check(x)


@pytest.mark.parametrize("transport", [False, True])
def test_mix_composes_the_given_sources_with_the_mask_of_the_inputs(transport):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    targets = torch.eye(3)[torch.randint(0, 3, (6,), generator=g)]
    saliency = torch.rand(6, 8, 8, generator=g) ** 4
    index, lam = torch.tensor([3, 4, 5, 0, 1, 2]), torch.full((6,), 0.55)
    mixer = PuzzleMixer(transport=transport, solver="torch")
    plain = mixer.mix(x, targets, saliency, 4, index, lam)
    # ones for the own images, zeros for the partners: the composed image is the mask itself
    mask = mixer.mix(x, targets, saliency, 4, index, lam, torch.ones_like(x), torch.zeros_like(x)).inputs
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), plain.lam)
    own, pool = torch.rand(6, 3, 8, 8, generator=g), torch.rand(6, 3, 8, 8, generator=g)
    out = mixer.mix(x, targets, saliency, 4, index, lam, own, pool)
    torch.testing.assert_close(out.lam, plain.lam)
    torch.testing.assert_close(out.targets, plain.targets)
    if not transport:
        torch.testing.assert_close(out.inputs, mask * own + (1 - mask) * pool[index])
    with pytest.raises(ValueError, match="own_sources must have the inputs' shape"):
        mixer.mix(x, targets, saliency, 4, index, lam, own[:, :1])
