"""SMMix's max-min attention region mixing on the patch grid (torch only).

Chen et al., "SMMix: Self-Motivated Image Mixing for Vision Transformers" (ICCV 2023), following
the authors' ``smmix.py`` (ChenMnZ/SMMix): for a square window of ``side x side`` patches,

* every sample's image-token attention (the last block's map, image-token queries and keys only,
  averaged over heads and queries: ``attn[:, :, p:, p:].mean((1, 2))``) is summed over every
  window position (stride 1);
* sample ``i`` keeps its own image except its **least** attended window, which receives the
  **most** attended window of its partner (token ``j`` of one window, in raster order, goes to
  token ``j`` of the other: the window is translated);
* ``lam`` is the area the sample keeps, ``1 - side^2 / P`` (timm's convention: the weight of the
  sample's own label).

The functions are vectorised over the batch (gather/scatter over patch indices).
"""

from __future__ import annotations

import torch

__all__ = ["image_token_attention", "max_min_windows", "smmix_images", "window_token_indices"]


def image_token_attention(attention: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(B, H, N, N) attention map -> (B, P) score per image token: mean over heads and image-token queries."""
    if attention.dim() != 4:
        raise ValueError(f"attention must be (B, heads, tokens, tokens), got shape {tuple(attention.shape)}.")
    p = num_prefix_tokens
    return attention[:, :, p:, p:].mean(dim=(1, 2))


def window_token_indices(grid: int, side: int, device: torch.device | None = None) -> torch.Tensor:
    """(W, side * side): the raster token indices of every ``side x side`` window of a ``grid x grid`` map.

    Windows are listed in raster order of their top-left corner (stride 1), ``W = (grid - side + 1)^2``.
    """
    if not 1 <= side <= grid:
        raise ValueError(f"window side must lie in [1, grid={grid}], got {side}.")
    index = torch.arange(grid * grid, device=device).view(grid, grid)
    windows = index.unfold(0, side, 1).unfold(1, side, 1)  # (g-s+1, g-s+1, s, s)
    return windows.reshape(-1, side * side)


def max_min_windows(scores: torch.Tensor, grid: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the windows with the largest and the smallest summed score.

    Returns ``(argmax, argmin)``, each (B,), indices into :func:`window_token_indices`; ties go to the
    first window in raster order.
    """
    windows = window_token_indices(grid, side, scores.device)
    sums = scores[:, windows].sum(dim=-1)  # (B, W)
    return sums.argmax(dim=1), sums.argmin(dim=1)


def _to_patches(inputs: torch.Tensor, patch_size: int) -> torch.Tensor:
    b, c, h, w = inputs.shape
    gh, gw = h // patch_size, w // patch_size
    x = inputs.reshape(b, c, gh, patch_size, gw, patch_size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch_size * patch_size)


def _from_patches(patches: torch.Tensor, shape: torch.Size, patch_size: int) -> torch.Tensor:
    b, c, h, w = shape
    gh, gw = h // patch_size, w // patch_size
    x = patches.reshape(b, gh, gw, c, patch_size, patch_size).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def smmix_images(
    inputs: torch.Tensor,
    scores: torch.Tensor,
    side: int,
    patch_size: int,
    partner: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste each partner's most attended window into the sample's least attended window.

    Args:
        inputs: images (B, C, H, W) on a square grid of ``H / patch_size`` patches.
        scores: (B, P) image-token attention of the *clean* images (:func:`image_token_attention`).
        side: window side in patches.
        patch_size: the ViT's patch size.
        partner: (B,) index of each sample's partner (the authors flip the batch).

    Returns:
        ``(mixed, source_mask, lam)``: the mixed images (a new tensor), a (B, P) bool mask of the
        patches that came from the partner, and ``lam = 1 - side^2 / P``.
    """
    b, _, h, w = inputs.shape
    if h != w or h % patch_size:
        raise ValueError(f"SMMix needs square images on a square patch grid; got {h}x{w} with patch_size={patch_size}.")
    grid = h // patch_size
    if scores.shape != (b, grid * grid):
        raise ValueError(f"scores must be (B, P) = ({b}, {grid * grid}), got {tuple(scores.shape)}.")
    windows = window_token_indices(grid, side, inputs.device)
    best, worst = max_min_windows(scores, grid, side)
    destination = windows[worst]  # (B, s*s) in the sample
    source = windows[best[partner]]  # (B, s*s) in its partner
    patches = _to_patches(inputs, patch_size)
    width = patches.shape[-1]
    pasted = patches[partner].gather(1, source.unsqueeze(-1).expand(-1, -1, width))
    mixed = patches.scatter(1, destination.unsqueeze(-1).expand(-1, -1, width), pasted)
    source_mask = torch.zeros(b, grid * grid, dtype=torch.bool, device=inputs.device)
    source_mask.scatter_(1, destination, True)
    lam = 1.0 - side * side / (grid * grid)
    return _from_patches(mixed, inputs.shape, patch_size), source_mask, lam
