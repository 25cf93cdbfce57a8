"""TransMix's label rule (Chen et al. 2022), torch only: lam from the class token's attention.

Authors' code: ``Beckschen/TransMix``, ``transmix.py`` (``Mixup_transmix.transmix_label``) and
their ``timm/models/vision_transformer.py`` (the last block returns ``attn.softmax`` detached,
``mean(attn[:, :, 0, 1:], dim=1)`` over heads). Their rule, in this library's convention (lam is
the weight of the sample's *own* target):

* the pixel mask of pasted pixels is downsampled to the patch grid with nearest-neighbour
  sampling (``nn.Upsample``: a patch counts as pasted when its top-left pixel is);
* ``w_own = sum(attention over own patches)``, ``w_pasted = sum(attention over pasted patches)``,
  ``lam_attn = w_own / (w_own + w_pasted)``;
* the official code then averages with the area: ``lam = (lam_area + lam_attn) / 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["infer_patch_grid", "patch_source_mask", "probe_sources", "transmix_lam"]


def probe_sources(batch_size: int, spatial: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """A probe image (B, 1, *spatial) float32 whose pixels hold their sample's index.

    Mixed with the same draws as the real batch, a mask mixer turns it into a map of where every
    pixel came from (``i`` for own pixels, ``index[i]`` for pasted ones).
    """
    probe = torch.arange(batch_size, device=device, dtype=torch.float32)
    return probe.view(batch_size, 1, *([1] * len(spatial))).expand(batch_size, 1, *spatial).contiguous()


def infer_patch_grid(num_patches: int, spatial: Sequence[int], patch_size: int | None = None) -> list[int]:
    """The patch grid (gh, gw) of a ViT with ``num_patches`` patch tokens on images of size ``spatial``.

    With ``patch_size`` None, square patches are assumed: ``patch_size = sqrt(H * W / num_patches)``.
    Raises a ValueError naming the fix when the numbers do not fit.
    """
    h, w = spatial
    if patch_size is None:
        guess = math.sqrt(h * w / num_patches) if num_patches > 0 else 0.0
        patch_size = round(guess)
        if patch_size < 1 or abs(guess - patch_size) > 1e-6:
            raise ValueError(
                f"cannot infer the patch size: {num_patches} patch tokens on {h}x{w} images is not a square-patch "
                "grid. Set patch_size, and num_prefix_tokens (class and distillation tokens before the patches)."
            )
    if h % patch_size or w % patch_size or (h // patch_size) * (w // patch_size) != num_patches:
        raise ValueError(
            f"{num_patches} patch tokens do not match {h}x{w} images with patch_size={patch_size}; "
            "check patch_size and num_prefix_tokens (the tokens before the patches: 1 for a class token)."
        )
    return [h // patch_size, w // patch_size]


def patch_source_mask(sources: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pasted patches and the pasted-pixel fraction from a mixed probe (see :func:`probe_sources`).

    Args:
        sources: (B, 1, H, W) mixed probe.
        grid: (gh, gw) patch grid.

    Returns:
        ``pasted`` (B, gh * gw) float 0/1, a patch is pasted when its top-left pixel is (the
        authors' nearest-neighbour downsampling), ``area`` (B,) the fraction of pasted pixels.
    """
    b = sources.shape[0]
    own = torch.arange(b, device=sources.device, dtype=sources.dtype).view(b, 1, 1, 1)
    pasted_pixels = sources != own
    h, w = sources.shape[-2:]
    step_h, step_w = h // grid[0], w // grid[1]
    pasted = pasted_pixels[:, 0, ::step_h, ::step_w].reshape(b, -1).float()
    area = pasted_pixels.flatten(1).float().mean(dim=1)
    return pasted, area


def transmix_lam(cls_attention: torch.Tensor, pasted: torch.Tensor, area: torch.Tensor | None = None) -> torch.Tensor:
    """TransMix's lam (weight of the own target) from the class token's attention over the patches.

    Args:
        cls_attention: (B, P) attention of the class token over the P patch tokens (mean over
            heads, prefix tokens removed); rows need not sum to one.
        pasted: (B, P) 1 for patches taken from the partner, 0 for own patches.
        area: (B,) fraction of pasted pixels; when given, the result is the official code's
            ``(lam_attn + (1 - area)) / 2``; None gives the paper's ``lam_attn`` alone.

    Returns:
        (B,) ``lam = w_own / (w_own + w_pasted)`` (averaged with ``1 - area`` when given).
    """
    attention = cls_attention.float()
    w_pasted = (attention * pasted).sum(dim=1)
    w_total = attention.sum(dim=1)
    lam = 1.0 - w_pasted / w_total
    if area is not None:
        lam = 0.5 * (lam + (1.0 - area))
    return lam
