"""PuzzleMix's adversarial step (torch only): an FGSM perturbation built from the saliency pass's input gradient.

Follows snu-mllab/PuzzleMix at commit 7eba27e8 (``main.py``'s training loop and ``mixup.py``'s
``mixup_graph``). Everything happens in *pixel* space, the images before normalisation with values
in [0, 1] (:class:`PixelScale` converts), with ``eps`` in pixel units (the authors' ``adv_eps / 255``):

1. :func:`random_start`: ``start ~ U(-eps, eps)`` per pixel, cut so that ``pixels + start`` stays
   in [0, 1]; the saliency pass then runs on ``pixels + start``;
2. :func:`fgsm_perturbation`: ``noise = coef * clamp(start + (eps + 2/255) * sign(g), -eps, eps)``
   with ``g`` that pass's input gradient and ``coef ~ U(0, 1)`` drawn once per batch;
3. :func:`perturb`: ``clamp(pixels + noise, 0, 1)``, applied to the own images and/or the partners
   (two independent draws with probability ``adv_p``) after the mask is optimised on the clean
   images and before the blocks are transported.

Wherever ``g`` is non-zero the perturbation has the sign of ``g`` (the overshoot ``2/255`` makes
``start + (eps + 2/255) sign(g)`` point the same way as ``sign(g)`` whatever the start); with a
zero start and ``coef = 1`` it is exactly ``eps * sign(g)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

OVERSHOOT = 2.0 / 255.0


class PixelScale:
    """The per-channel normalisation images carry: ``x = (pixels - mean) / std`` with pixels in [0, 1].

    ``mean=None`` and ``std=None`` (the default): the images are pixels already. One value applies
    to every channel; otherwise one value per channel (checked against the images by :meth:`check`).
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError(
                "pixel_mean and pixel_std go together: give both (the normalisation x = (pixel - mean) / std "
                f"the images carry) or neither (images are pixels in [0, 1]); got mean={mean}, std={std}."
            )
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        if self.std is not None:
            if not self.std or len(self.std) != len(self.mean):
                raise ValueError(
                    f"pixel_mean and pixel_std need one value per channel (or one for all), got {mean} and {std}."
                )
            if min(self.std) <= 0:
                raise ValueError(f"pixel_std must be positive, got {std}.")

    @property
    def identity(self) -> bool:
        return self.mean is None

    def check(self, images: torch.Tensor) -> None:
        """Raise unless the normalisation has one value, or one per channel of the images (B, C, H, W)."""
        if self.mean is not None and len(self.mean) not in (1, images.shape[1]):
            raise ValueError(
                f"pixel_mean/pixel_std have {len(self.mean)} values but the images have {images.shape[1]} "
                "channels; give one value per channel or one for all."
            )

    def _stats(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (images.dim() - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(shape)
        return mean, std

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """``images * std + mean`` in float32 (the images themselves, as float32, without a normalisation)."""
        if self.identity:
            return images.float()
        mean, std = self._stats(images)
        return images.float() * std + mean

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(pixels - mean) / std`` (the pixels themselves without a normalisation)."""
        if self.identity:
            return pixels
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def __repr__(self) -> str:
        return f"PixelScale(mean={self.mean}, std={self.std})"


class AdversarialStep(NamedTuple):
    """One batch's adversarial step: which side was perturbed, the random start, ``coef`` and the noise (pixels)."""

    own: bool
    partner: bool
    start: torch.Tensor
    coef: float
    noise: torch.Tensor


def random_start(pixels: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``start ~ U(-eps, eps)`` per pixel, then cut so that ``pixels + start`` lies in [0, 1] (float32)."""
    u = torch.rand(pixels.shape, generator=generator, device=pixels.device, dtype=torch.float32)
    start = (2.0 * u - 1.0) * eps
    return (pixels.float() + start).clamp(0.0, 1.0) - pixels.float()


def fgsm_perturbation(start: torch.Tensor, gradient: torch.Tensor, eps: float, coef: float = 1.0) -> torch.Tensor:
    """``coef * clamp(start + (eps + 2/255) * sign(gradient), -eps, eps)`` (float32, the shape of ``start``)."""
    step = (eps + OVERSHOOT) * gradient.float().sign()
    return coef * (start.float() + step).clamp(-eps, eps)


def perturb(pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``clamp(pixels + noise, 0, 1)``: the perturbed images stay in the pixel range."""
    return (pixels.float() + noise).clamp(0.0, 1.0)


__all__ = ["OVERSHOOT", "AdversarialStep", "PixelScale", "fgsm_perturbation", "perturb", "random_start"]
