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


def transport_sources(
    visible: torch.Tensor, saliency: torch.Tensor, eps: float, rounds: int | None = None
) -> torch.Tensor:
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
    cost = (
        eps * grid_cost_matrix(n, device) - saliency.reshape(b, cells, 1).float() * visible.reshape(b, 1, cells).float()
    )
    arange = torch.arange(cells, device=device)
    rows = arange.expand(b, cells)
    claim = cost.argmin(dim=-1)
    won = torch.zeros(b, cells, dtype=torch.bool, device=device)
    for _ in range(n if rounds is None else rounds):
        claim = cost.argmin(dim=-1)  # (B, sources): every source claims its cheapest destination
        won = _resolve_claims(cost.gather(2, claim.unsqueeze(-1)).squeeze(-1), claim, rows)
        cost.scatter_add_(2, claim.unsqueeze(-1), (~won).to(cost.dtype).unsqueeze(-1))  # losers pay 1 more
    dest = torch.where(won, claim, -1)
    taken = torch.zeros(b, cells, dtype=torch.long, device=device).scatter_add_(1, claim, won.long()) > 0
    # leftovers whose own place is free stay there
    stay = (~won) & (~taken)
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


def _resolve_claims(claim_cost: torch.Tensor, claim: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Which claims win, as the authors' ``argmin`` over each column of ``plan * cost`` decides (B, sources) bool.

    In the authors' dense formulation a column holds the claimants' costs and a 0 for every other
    source, and the first row holding the column minimum wins; the column has no winner when that
    row is not a claimant (all claimants cost more than 0, or a non-claimant comes first among zeros).
    """
    b, cells = claim.shape
    big = torch.full((b, cells), cells, dtype=torch.long, device=claim.device)
    counts = torch.zeros(b, cells, dtype=torch.long, device=claim.device).scatter_add_(1, claim, torch.ones_like(claim))
    # the column minimum of plan * cost: claimants' costs, and 0 when some source does not claim it
    base = torch.where(counts == cells, torch.inf, 0.0).to(claim_cost.dtype)
    col_min = base.scatter_reduce(1, claim, claim_cost, reduce="amin", include_self=True)
    at_min = claim_cost == col_min.gather(1, claim)
    first_claimant = big.scatter_reduce(1, claim, torch.where(at_min, rows, cells), reduce="amin", include_self=True)
    # the first source not claiming column q: 0 unless source 0 claims q; then the first source claiming elsewhere
    differs = claim != claim[:, :1]
    first_other = torch.where(differs.any(dim=1), differs.long().argmax(dim=1), cells)
    first_non_claimant = torch.where(rows == claim[:, :1], first_other.view(-1, 1), 0)
    first_non_claimant = torch.where((col_min == 0) & (counts < cells), first_non_claimant, cells)
    winner = torch.where(first_claimant < first_non_claimant, first_claimant, cells)  # (B, destinations)
    return winner.gather(1, claim) == rows


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
