"""PuzzleMix's block transport (torch only): move an image's salient blocks to where its mask shows them.

On an ``n x n`` grid of blocks, block ``p`` moving to ``q`` costs
``eps * C[p, q] - s[p] * z[q]``: ``C`` the squared grid distance divided by ``(n - 1)^2``, ``s`` the
block saliency (summing to 1), ``z[q] = 1`` where the mixing mask keeps this image (``mask > 0``).
:func:`transport_sources` follows the authors' ``mask_transport`` (snu-mllab/PuzzleMix,
``imagenet/mixup.py``): ``n`` rounds in which every source takes its cheapest destination, the
cheapest claimant of each destination wins it and the losers' cost to it grows by 1. Deliberate
departure: the authors return the winners only, so a block that never wins is dropped and an
unclaimed destination becomes black; here the result is completed to a permutation (a leftover
block stays where it is when its own place is free, the rest fill the free places in order), so
the transported image always holds every block exactly once.
"""

from __future__ import annotations

import torch


def grid_cost_matrix(n: int, device=None) -> torch.Tensor:
    """(n^2, n^2) squared distance between the blocks of an ``n x n`` grid over ``(n - 1)^2`` (row-major)."""
    r = torch.arange(n * n, device=device)
    i, j = torch.div(r, n, rounding_mode="floor"), r % n
    dist = (i.view(-1, 1) - i.view(1, -1)).square() + (j.view(-1, 1) - j.view(1, -1)).square()
    return dist.float() / max(n - 1, 1) ** 2


def transport_sources(visible: torch.Tensor, saliency: torch.Tensor, eps: float, rounds: int | None = None) -> torch.Tensor:
    """For each destination block, the source block that moves there: LongTensor (B, n*n), a permutation per row.

    Args:
        visible: (B, n, n) bool, where the mask shows this image (``z``).
        saliency: (B, n, n) block saliency of this image.
        eps: weight of the distance cost (the authors' ``t_eps``, 0.8).
        rounds: rounds of the claim-and-resolve auction; None uses ``n`` (the authors' ``n_iter``).
    """
    b, n, _ = visible.shape
    cells = n * n
    device = saliency.device
    cost = eps * grid_cost_matrix(n, device) - saliency.reshape(b, cells, 1).float() * visible.reshape(b, 1, cells).float()
    arange = torch.arange(cells, device=device)
    won = torch.zeros(b, cells, cells, device=device)
    for _ in range(n if rounds is None else rounds):
        claim = torch.zeros_like(cost).scatter_(-1, cost.argmin(dim=-1, keepdim=True), 1.0)
        fight = claim * cost
        won = torch.zeros_like(cost).scatter_(-2, fight.argmin(dim=-2, keepdim=True), 1.0) * claim
        cost = cost + (claim - won)
    has_dest = won.sum(dim=-1) > 0  # (B, sources)
    taken = won.sum(dim=-2) > 0  # (B, destinations)
    dest = torch.where(has_dest, won.argmax(dim=-1), -1)
    # leftovers whose own place is free stay there
    stay = (~has_dest) & (~taken)
    dest = torch.where(stay, arange, dest)
    taken = taken | stay
    left = dest < 0
    # the remaining leftovers fill the remaining free places in index order
    rank = torch.cumsum(left.long(), dim=1) - 1
    free = ~taken
    free_rank = torch.cumsum(free.long(), dim=1) - 1
    slots = torch.zeros(b, cells + 1, device=device, dtype=torch.long)  # rank -> free place; column `cells` is a dump
    slots.scatter_(1, torch.where(free, free_rank, cells), arange.expand(b, cells).contiguous())
    filled = slots.gather(1, rank.clamp_min(0))
    dest = torch.where(left, filled, dest)
    sources = torch.empty_like(dest).scatter_(1, dest, arange.expand(b, cells).contiguous())
    return sources


def permute_blocks(images: torch.Tensor, sources: torch.Tensor, n: int) -> torch.Tensor:
    """Images (B, C, H, W) whose block ``q`` of the ``n x n`` grid is the input's block ``sources[:, q]``.

    ``H`` and ``W`` must be multiples of ``n``.
    """
    b, c, h, w = images.shape
    if h % n or w % n:
        raise ValueError(f"permute_blocks needs H and W divisible by the grid size {n}, got {h}x{w}.")
    bh, bw = h // n, w // n
    blocks = images.reshape(b, c, n, bh, n, bw).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c * bh * bw)
    moved = blocks.gather(1, sources.view(b, n * n, 1).expand(-1, -1, c * bh * bw))
    return moved.reshape(b, n, n, c, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


__all__ = ["grid_cost_matrix", "permute_blocks", "transport_sources"]
