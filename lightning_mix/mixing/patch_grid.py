"""Patch-aligned CutMix for vision transformers: the box lies on the ViT's patch grid (torch only).

TransMix, TL-Align and SMMix reason about which *patches* come from the partner. A pixel box that
cuts through patches makes that ambiguous; :class:`PatchCutMix` draws the CutMix box on the grid
of ``patch_size`` patches instead, so every patch is wholly the sample's own or wholly the partner's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lightning_mix.mixing.mixers import CutMix, box_corners, paste_boxes
from lightning_mix.mixing.sampling import Mode, Pairing, expand_draws

__all__ = ["PatchCutMix", "grid_box_corners", "patch_grid"]


def patch_grid(spatial: Sequence[int], patch_size: int, owner: str = "PatchCutMix") -> list[int]:
    """The number of patches along each spatial dim; raises when ``patch_size`` does not divide a size."""
    if any(size % patch_size for size in spatial):
        raise ValueError(
            f"{owner}: patch_size={patch_size} must divide every spatial size, got {tuple(spatial)}; "
            "use the ViT's patch size and an input size that is a multiple of it."
        )
    return [size // patch_size for size in spatial]


def grid_box_corners(
    lam: torch.Tensor, centres: torch.Tensor, grid: Sequence[int], patch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix box corners in pixels, snapped to the patch grid.

    The box is :func:`~lightning_mix.mixing.box_corners`'s rule applied on the grid (side
    ``floor(g * (1 - lam)^(1/n))`` patches around the patch ``centres``, clipped), then scaled by
    ``patch_size``: ``lo``, ``hi`` (N, n) are multiples of ``patch_size``.
    """
    lo, hi = box_corners(lam, centres, grid)
    return lo * patch_size, hi * patch_size


class PatchCutMix(CutMix):
    """CutMix with the box on the patch grid: whole patches of the partner are pasted.

    The box side along each spatial dim is ``floor(g_d * (1 - lam)^(1/n))`` patches (``g_d`` = size
    / ``patch_size``), its centre a uniform patch, clipped to the grid; lam is then
    ``1 - pasted area / image area`` (``correct_lam=True``). Same modes, pairings and dtypes as
    :class:`~lightning_mix.mixing.CutMix`.

    Args:
        alpha: Beta concentration (1.0, as CutMix).
        patch_size: the ViT's patch size; it must divide the input's spatial sizes.
        mode, correct_lam, pairing, bandwidth: see :class:`~lightning_mix.mixing.CutMix`.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        patch_size: int = 16,
        mode: Mode = "batch",
        correct_lam: bool = True,
        pairing: Pairing = "flip",
        bandwidth: float = 1.0,
    ) -> None:
        super().__init__(alpha, mode, correct_lam, pairing, bandwidth)
        if patch_size < 1:
            raise ValueError(f"PatchCutMix: patch_size must be a positive integer, got {patch_size}.")
        self.patch_size = int(patch_size)

    def __repr__(self) -> str:
        fields = f"alpha={self.alpha}, patch_size={self.patch_size}, mode={self.mode!r}, pairing={self.pairing!r}"
        return f"PatchCutMix({fields})"

    def check_inputs(self, inputs: torch.Tensor) -> None:
        super().check_inputs(inputs)
        patch_grid(inputs.shape[2:], self.patch_size)

    def mix_inputs(self, inputs, index, lam, generator):
        b, spatial = inputs.shape[0], inputs.shape[2:]
        grid = patch_grid(spatial, self.patch_size)
        n = 1 if self.mode == "batch" else b
        wide = torch.float32 if inputs.device.type == "mps" else torch.float64
        sizes = torch.tensor(grid, device=inputs.device, dtype=wide)
        u = torch.rand((n, len(grid)), generator=generator, device=inputs.device, dtype=wide)
        centres = torch.floor(u * sizes).long()
        if self.mode == "pair":
            centres = expand_draws(centres, b, self.mode, index)
        lo, hi = grid_box_corners(lam[: centres.shape[0]], centres, grid, self.patch_size)
        if self.correct_lam:
            volume = (hi - lo).prod(dim=1).to(wide)
            lam = (1.0 - volume / math.prod(spatial)).float().expand(b).contiguous()
        return paste_boxes(inputs, index, lo, hi), lam
