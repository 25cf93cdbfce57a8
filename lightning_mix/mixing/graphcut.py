"""Multi-label grid energies and their minimisers (torch only; the exact solver is an optional package).

A *grid energy* over an ``n x m`` grid of cells, each taking a label ``k`` in ``0 .. L-1``::

    E(k) = sum_p unary[p, k_p] + sum_(p,q) w_pq * (k_p - k_q)^2 / (L - 1)^2

over the 4-neighbour edges: ``w_v[r, c]`` joins ``(r, c)`` and ``(r + 1, c)``, ``w_h[r, c]`` joins
``(r, c)`` and ``(r, c + 1)``. This is PuzzleMix's mask problem (``graphcut_multi`` in
snu-mllab/PuzzleMix ``mixup.py``), built by :func:`lightning_mix.mixing.puzzlemix.puzzle_energy`.

Solvers, all batched over a leading batch dimension:

* :func:`solve_grid_torch`: torch only, on the tensors' device, no host sync. Exhaustive search
  (exact) when ``L ** cells <= exhaustive_limit``; otherwise iterated conditional modes on the
  checkerboard colouring (a cell's label is set to its best given its neighbours, all cells of one
  colour at once), run from ``L + 1`` starts (the per-cell unary minimum and each constant
  labelling), keeping the lowest energy per sample. A local minimum: its gap to the exact optimum
  is measured in ``docs/benchmarks/saliency_mixing.md``.
* :func:`solve_grid_gco`: the authors' solver, alpha-beta swap graph cuts of the ``gco-wrapper``
  package (``pip install lightning-mix[graphcut]``), one sample at a time on the host (a documented
  per-sample solver call with a device-to-host copy). Exact for ``L = 2`` with non-negative
  weights; a strong local minimum otherwise.
"""

from __future__ import annotations

import torch

# Exhaustive search up to this many labellings per sample (3 labels on 2x2 blocks: 81).
EXHAUSTIVE_LIMIT = 4096
# Scale of the integer energies handed to gco, as the authors' ``large_val = 1000 * block_num ** 2``.
_GCO_SCALE = 1000


def _check_energy(unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor) -> tuple[int, int, int, int]:
    if unary.dim() != 4:
        raise ValueError(f"unary must be (B, n, m, L), got shape {tuple(unary.shape)}.")
    b, n, m, labels = unary.shape
    if labels < 2:
        raise ValueError(f"a grid energy needs at least 2 labels, got {labels}.")
    if tuple(w_v.shape) != (b, n - 1, m) or tuple(w_h.shape) != (b, n, m - 1):
        raise ValueError(
            f"edge weights must be w_v (B, n-1, m) = {(b, n - 1, m)} and w_h (B, n, m-1) = {(b, n, m - 1)}, "
            f"got {tuple(w_v.shape)} and {tuple(w_h.shape)}."
        )
    return b, n, m, labels


def grid_energy(labels: torch.Tensor, unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    """E(labels) (B,) for integer labels (B, n, m) of the energy in the module docstring."""
    _, _, _, n_labels = _check_energy(unary, w_v, w_h)
    lab = labels.long()
    data = unary.gather(-1, lab.unsqueeze(-1)).squeeze(-1).flatten(1).sum(dim=1)
    scale = float((n_labels - 1) ** 2)
    f = lab.to(unary.dtype)
    vertical = (w_v * (f[:, 1:, :] - f[:, :-1, :]).square()).flatten(1).sum(dim=1)
    horizontal = (w_h * (f[:, :, 1:] - f[:, :, :-1]).square()).flatten(1).sum(dim=1)
    return data + (vertical + horizontal) / scale


def _exhaustive(unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    b, n, m, n_labels = unary.shape
    cells = n * m
    # every labelling as base-L digits: (K, cells)
    codes = torch.arange(n_labels**cells, device=unary.device)
    powers = n_labels ** torch.arange(cells - 1, -1, -1, device=unary.device)
    all_labels = torch.div(codes.unsqueeze(1), powers, rounding_mode="floor") % n_labels
    k = all_labels.shape[0]
    grid = all_labels.view(1, k, n, m).expand(b, k, n, m).reshape(b * k, n, m)

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(1).expand(b, k, *t.shape[1:]).reshape(b * k, *t.shape[1:])

    energies = grid_energy(grid, rep(unary), rep(w_v), rep(w_h)).view(b, k)
    return all_labels.view(k, n, m).index_select(0, energies.argmin(dim=1))


def _icm(unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor, sweeps: int) -> torch.Tensor:
    b, n, m, n_labels = unary.shape
    starts = [unary.argmin(dim=-1)] + [torch.full((b, n, m), k, device=unary.device) for k in range(n_labels)]
    s = len(starts)
    labels = torch.stack(starts, dim=1).reshape(b * s, n, m)

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(1).expand(b, s, *t.shape[1:]).reshape(b * s, *t.shape[1:])

    u, wv, wh = rep(unary), rep(w_v).unsqueeze(-1), rep(w_h).unsqueeze(-1)
    ks = torch.arange(n_labels, device=unary.device, dtype=unary.dtype)
    scale = float((n_labels - 1) ** 2)
    rows = torch.arange(n, device=unary.device).view(n, 1)
    cols = torch.arange(m, device=unary.device).view(1, m)
    colours = [((rows + cols) % 2) == c for c in (0, 1)]

    def penalty(neighbour: torch.Tensor) -> torch.Tensor:  # (.., 1) labels -> (.., L)
        return (ks - neighbour.to(ks.dtype).unsqueeze(-1)).square() / scale

    for _ in range(sweeps):
        for colour in colours:
            cost = u.clone()
            cost[:, 1:] += wv * penalty(labels[:, :-1])
            cost[:, :-1] += wv * penalty(labels[:, 1:])
            cost[:, :, 1:] += wh * penalty(labels[:, :, :-1])
            cost[:, :, :-1] += wh * penalty(labels[:, :, 1:])
            labels = torch.where(colour, cost.argmin(dim=-1), labels)
    energies = grid_energy(labels, u, rep(w_v), rep(w_h)).view(b, s)
    best = energies.argmin(dim=1)
    return labels.view(b, s, n, m)[torch.arange(b, device=unary.device), best]


def solve_grid_torch(
    unary: torch.Tensor,
    w_v: torch.Tensor,
    w_h: torch.Tensor,
    sweeps: int = 8,
    exhaustive_limit: int = EXHAUSTIVE_LIMIT,
) -> torch.Tensor:
    """Labels (B, n, m), int64, minimising (exactly or locally) the grid energy; see the module docstring.

    Args:
        unary: (B, n, m, L) float costs.
        w_v: (B, n-1, m) weights of the vertical edges.
        w_h: (B, n, m-1) weights of the horizontal edges.
        sweeps: checkerboard sweeps of iterated conditional modes (each updates every cell once).
        exhaustive_limit: search all ``L ** (n m)`` labellings when there are at most this many.
    """
    _, n, m, n_labels = _check_energy(unary, w_v, w_h)
    if n_labels ** (n * m) <= exhaustive_limit:
        return _exhaustive(unary, w_v, w_h)
    return _icm(unary, w_v, w_h, sweeps)


def gco_available() -> bool:
    """Whether the optional ``gco-wrapper`` package (module ``gco``) can be imported."""
    try:
        import gco  # noqa: F401
    except ImportError:
        return False
    return True


def solve_grid_gco(
    unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor, algorithm: str = "swap", scale: float | None = None
) -> torch.Tensor:
    """Labels (B, n, m) by gco's graph cuts (the authors' ``algorithm="swap"``), on ``unary``'s device.

    Costs are scaled by ``scale`` (default ``1000 * n * m``, the authors' ``large_val``) and
    rounded to int32, as the authors do. One gco call per sample, on the host.
    """
    try:
        import gco
    except ImportError as error:
        raise ImportError(
            "solve_grid_gco needs the optional gco-wrapper package: pip install 'lightning-mix[graphcut]' "
            "(or pip install gco-wrapper), or use solver='torch'."
        ) from error
    _, n, m, n_labels = _check_energy(unary, w_v, w_h)
    factor = float(scale) if scale is not None else float(_GCO_SCALE * n * m)
    table = torch.tensor([[(i - j) ** 2 for j in range(n_labels)] for i in range(n_labels)], dtype=torch.int32)
    pair_factor = factor / (n_labels - 1) ** 2
    u = (unary.detach().double().cpu() * factor).round().to(torch.int32).numpy()
    v = (w_v.detach().double().cpu() * pair_factor).round().to(torch.int32).numpy()
    h = (w_h.detach().double().cpu() * pair_factor).round().to(torch.int32).numpy()
    t = table.numpy()
    out = [
        torch.from_numpy(gco.cut_grid_graph(u[i], t, v[i], h[i], algorithm=algorithm).reshape(n, m).copy())
        for i in range(u.shape[0])
    ]
    return torch.stack(out).long().to(unary.device)


__all__ = [
    "EXHAUSTIVE_LIMIT",
    "gco_available",
    "grid_energy",
    "solve_grid_gco",
    "solve_grid_torch",
]
