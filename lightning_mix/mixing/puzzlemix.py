"""PuzzleMix (Kim, Choo and Song, ICML 2020), torch only: saliency-guided graph-cut masks and block transport.

Follows snu-mllab/PuzzleMix (``main.py`` defaults and ``mixup.py``'s ``mixup_graph``,
``graphcut_multi``, ``neigh_penalty``, ``mask_transport``; commit 7eba27e8 for the CIFAR code,
0534b55f for ``imagenet/mixup.py``). For a sample ``i``, its partner ``j = index[i]`` and an
``n x n`` block grid, the mask takes values ``1 - k / (L - 1)`` (``k`` in ``0 .. L-1``, ``L =
n_labels``) on each block and minimises :func:`puzzle_energy`: the saliency each image loses, a
label-smoothness term (``beta``), a data-smoothness term at block borders (``gamma``) and a
binomial prior pulling the mask mean towards ``lam`` (``eta``). With ``transport``, each image's
salient blocks are then moved to where the mask shows it (:mod:`lightning_mix.mixing.transport`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from lightning_mix.mixing.batch import MixedBatch
from lightning_mix.mixing.graphcut import (
    gco_available,
    solve_grid_gco,
    solve_grid_torch,
)
from lightning_mix.mixing.input_saliency import pool_saliency
from lightning_mix.mixing.sampling import make_pairing, sample_beta
from lightning_mix.mixing.targets import mix_targets
from lightning_mix.mixing.transport import permute_blocks, transport_sources

Solver = Literal["auto", "torch", "gco"]
SOLVERS = ("auto", "torch", "gco")


def label_prior(lam: torch.Tensor, n_labels: int, eta: float, cells: int) -> torch.Tensor:
    """(B, L) prior cost ``-eta * log(pmf_k + 1e-8) / cells`` of label ``k`` (mask ``1 - k/(L-1)``).

    ``pmf_k = binom(L-1, k) lam^(L-1-k) (1-lam)^k`` is the authors' table for ``L`` = 2, 3, 4.
    """
    k = torch.arange(n_labels, device=lam.device, dtype=torch.float64)
    top = n_labels - 1
    coef = torch.tensor([math.comb(top, int(i)) for i in range(n_labels)], device=lam.device, dtype=torch.float64)
    a = lam.double().view(-1, 1)
    pmf = coef * a.pow(top - k) * (1 - a).pow(k)
    return (-eta * torch.log(pmf + 1e-8) / cells).float()


def _border_penalty(top: torch.Tensor, bottom: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """Mean |difference| (B, n-1, n) across the n-1 horizontal block borders of pooled images (B, C, n k, n k)."""
    upper = top[:, :, k - 1 : (n - 1) * k : k, :]
    lower = bottom[:, :, k : n * k : k, :]
    diff = (upper - lower).abs().mean(dim=1)  # (B, n-1, n k)
    return diff.view(diff.shape[0], n - 1, n, k).mean(dim=-1)


def _effective_neighbourhood(block_size: int, neigh_size: int) -> int:
    """The largest divisor of ``block_size`` not above ``neigh_size`` (the authors' ``min`` for powers of 2)."""
    size = min(neigh_size, block_size)
    while block_size % size:
        size -= 1
    return size


def puzzle_energy(
    saliency_own: torch.Tensor,
    saliency_partner: torch.Tensor,
    inputs_own: torch.Tensor,
    inputs_partner: torch.Tensor,
    lam: torch.Tensor,
    beta: float = 1.2,
    gamma: float = 0.5,
    eta: float = 0.2,
    neigh_size: int = 4,
    n_labels: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PuzzleMix's mask energy as ``(unary (B, n, n, L), w_v (B, n-1, n), w_h (B, n, n-1))``.

    See :mod:`lightning_mix.mixing.graphcut` for the energy's form. With ``s`` the block saliency
    (each map summing to 1), ``b' = beta / n / 16`` and ``D[a][b]`` the mean absolute difference
    across a block border when the upper (left) block comes from image ``a`` and the lower (right)
    from ``b`` (0: partner, 1: own; pixels average-pooled over ``neigh_size`` squares), scaled by
    ``b' * gamma``, exactly as the authors:

    * the cost of keeping the own block is the partner's saliency ``s_j`` plus half of ``D[1][.]``
      on each border; of taking the partner's, ``s_i`` plus half of ``D[0][.]``;
    * ``unary[k] = (1 - k/(L-1)) * own cost + k/(L-1) * partner cost + prior[k]`` with
      :func:`label_prior`;
    * ``w = (D[1][0] + D[0][1] - D[1][1] - D[0][0]) / 2 + b'`` on each edge.

    The images are used as given (the authors un-normalise them with the dataset mean and std
    first, which rescales ``gamma``'s effect by the std).
    """
    b, n, _ = saliency_own.shape
    height = inputs_own.shape[-2]
    block = height // n
    ns = _effective_neighbourhood(block, neigh_size)
    k = block // ns
    beta_s = beta / n / 16
    pooled = (F.avg_pool2d(inputs_partner.float(), ns), F.avg_pool2d(inputs_own.float(), ns))
    pooled_t = tuple(p.transpose(-2, -1) for p in pooled)
    d_x = [[_border_penalty(pooled[a], pooled[c], k, n) * (beta_s * gamma) for c in (0, 1)] for a in (0, 1)]
    d_y = [
        [_border_penalty(pooled_t[a], pooled_t[c], k, n).transpose(-2, -1) * (beta_s * gamma) for c in (0, 1)]
        for a in (0, 1)
    ]
    cost_own = saliency_partner.float().clone()
    cost_partner = saliency_own.float().clone()
    cost_own[:, :-1, :] += (d_x[1][0] + d_x[1][1]) / 2
    cost_partner[:, :-1, :] += (d_x[0][1] + d_x[0][0]) / 2
    cost_own[:, 1:, :] += (d_x[0][1] + d_x[1][1]) / 2
    cost_partner[:, 1:, :] += (d_x[1][0] + d_x[0][0]) / 2
    cost_own[:, :, :-1] += (d_y[1][0] + d_y[1][1]) / 2
    cost_partner[:, :, :-1] += (d_y[0][1] + d_y[0][0]) / 2
    cost_own[:, :, 1:] += (d_y[0][1] + d_y[1][1]) / 2
    cost_partner[:, :, 1:] += (d_y[1][0] + d_y[0][0]) / 2
    w_v = (d_x[1][0] + d_x[0][1] - d_x[1][1] - d_x[0][0]) / 2 + beta_s
    w_h = (d_y[1][0] + d_y[0][1] - d_y[1][1] - d_y[0][0]) / 2 + beta_s
    t = torch.linspace(0, 1, n_labels, device=saliency_own.device)
    unary = (1 - t) * cost_own.unsqueeze(-1) + t * cost_partner.unsqueeze(-1)
    unary = unary + label_prior(lam, n_labels, eta, n * n).view(b, 1, 1, n_labels)
    return unary, w_v, w_h


class PuzzleMixer:
    """PuzzleMix on a batch, given its input saliency.

    The saliency comes from :func:`~lightning_mix.mixing.input_saliency.input_gradient_saliency`.

    ``mixer(inputs, targets, saliency, block_num, generator) -> MixedBatch``: partners by a random
    permutation, one ``lam ~ Beta(alpha, alpha)`` for the batch (as the authors), the mask of
    :func:`puzzle_energy` on a ``block_num x block_num`` grid, blocks transported, and
    ``lam[i]`` = the mean of sample ``i``'s mask (the weight its own target gets). Inputs
    (B, C, H, W) float with ``H`` and ``W`` multiples of ``block_num``.

    With uniform saliency and ``gamma=0`` the energy's data terms are constant, the optimum is the
    constant label nearest the prior's mode and transport is the identity: PuzzleMix reduces to
    input Mixup with lam quantised to ``{0, 1/(L-1), ..., 1}`` (the label ``k`` maximising
    ``binom(L-1, k) lam^(L-1-k) (1-lam)^k``).

    Args:
        alpha: Beta concentration of lam (authors: 1.0).
        n_labels: mask levels ``L`` (authors: 3, i.e. masks in {0, 0.5, 1}).
        beta: label smoothness (1.2); gamma: data smoothness at block borders (0.5);
        eta: weight of the prior towards lam (0.2); neigh_size: pooling size of the border
            comparison (4).
        transport: move salient blocks to where the mask shows them (authors: on).
        t_eps: distance weight of the transport cost (0.8).
        solver: ``"gco"`` (the authors' alpha-beta swap; optional package gco-wrapper),
            ``"torch"`` (on device, see :func:`~lightning_mix.mixing.graphcut.solve_grid_torch`)
            or ``"auto"`` (gco when installed).
        sweeps: iterated-conditional-modes sweeps of the torch solver.
        t_size: side in pixels of the transport's blocks (authors: -1, the mask's blocks). A size
            below the mask's block size transports on the finer grid ``H // t_size`` (the mask and
            the saliency brought to it, as the authors' ``t_size < block_size`` branch); it must
            divide the block size, on square images. Sizes at or above the block size use the mask's grid.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        n_labels: int = 3,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        transport: bool = True,
        t_eps: float = 0.8,
        solver: Solver = "auto",
        sweeps: int = 8,
        t_size: int = -1,
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"PuzzleMix: alpha must be positive, got {alpha}.")
        if n_labels < 2:
            raise ValueError(f"PuzzleMix: n_labels must be at least 2, got {n_labels}.")
        for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta), ("t_eps", t_eps)):
            if value < 0:
                raise ValueError(f"PuzzleMix: {name} must be non-negative, got {value}.")
        if neigh_size < 1 or sweeps < 1:
            raise ValueError(f"PuzzleMix: neigh_size and sweeps must be at least 1, got {neigh_size} and {sweeps}.")
        if solver not in SOLVERS:
            raise ValueError(f"PuzzleMix: solver must be one of {SOLVERS}, got {solver!r}.")
        if t_size != -1 and t_size < 1:
            raise ValueError(f"PuzzleMix: t_size must be -1 (the mask's blocks) or a positive size, got {t_size}.")
        if solver == "gco" and not gco_available():
            raise ImportError(
                "PuzzleMix(solver='gco') needs the optional gco-wrapper package: "
                "pip install 'lightning-mix[graphcut]', "
                "or use solver='torch' (or 'auto')."
            )
        self.alpha = float(alpha)
        self.n_labels = int(n_labels)
        self.beta, self.gamma, self.eta = float(beta), float(gamma), float(eta)
        self.neigh_size = int(neigh_size)
        self.transport = bool(transport)
        self.t_eps = float(t_eps)
        self.solver = solver
        self.sweeps = int(sweeps)
        self.t_size = int(t_size)
        self.uses_gco = solver == "gco" or (solver == "auto" and gco_available())

    def solve(self, unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        """Integer labels (B, n, n) of the mask energy with the configured solver."""
        if self.uses_gco:
            return solve_grid_gco(unary, w_v, w_h)
        return solve_grid_torch(unary, w_v, w_h, sweeps=self.sweeps)

    def __call__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        saliency: torch.Tensor,
        block_num: int,
        generator: torch.Generator | None = None,
        own_sources: torch.Tensor | None = None,
        partner_sources: torch.Tensor | None = None,
    ) -> MixedBatch:
        check_puzzle_inputs(inputs, (block_num,))
        b, device = inputs.shape[0], inputs.device
        index = make_pairing(b, "random", generator=generator, device=device)
        lam = sample_beta(self.alpha, self.alpha, 1, generator, device).expand(b)
        return self.mix(inputs, targets, saliency, block_num, index, lam, own_sources, partner_sources)

    def mix(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        saliency: torch.Tensor,
        block_num: int,
        index: torch.Tensor,
        lam: torch.Tensor,
        own_sources: torch.Tensor | None = None,
        partner_sources: torch.Tensor | None = None,
    ) -> MixedBatch:
        """The PuzzleMix of ``inputs`` with ``inputs[index]`` for given partners and prior lam (B,).

        The mask is optimised on ``inputs`` (their data-smoothness terms). The images that are cut,
        transported and composed are ``own_sources`` and ``partner_sources[index]`` (both default
        to ``inputs``, same shape): PuzzleMix's adversarial step perturbs them after the mask is
        chosen, and the callback optimises the mask on un-normalised pixels while it composes the
        normalised images.
        """
        n = block_num
        own = inputs if own_sources is None else own_sources
        pool = inputs if partner_sources is None else partner_sources
        for name, source in (("own_sources", own), ("partner_sources", pool)):
            if source.shape != inputs.shape:
                raise ValueError(
                    f"PuzzleMixer: {name} must have the inputs' shape {tuple(inputs.shape)}, got {tuple(source.shape)}."
                )
        sal_own = pool_saliency(saliency, (n, n))
        sal_partner = sal_own.index_select(0, index)
        unary, w_v, w_h = puzzle_energy(
            sal_own,
            sal_partner,
            inputs,
            inputs.index_select(0, index),
            lam,
            self.beta,
            self.gamma,
            self.eta,
            self.neigh_size,
            self.n_labels,
        )
        labels = self.solve(unary, w_v, w_h)
        block_mask = 1.0 - labels.float() / (self.n_labels - 1)  # weight of the own image per block
        partner = pool.index_select(0, index)
        if self.transport:
            grid = transport_grid(inputs, n, self.t_size)
            t_mask, t_own, t_partner = block_mask, sal_own, sal_partner
            if grid != n:  # the authors' t_size < block_size: mask (nearest) and saliency on the finer grid
                t_mask = block_mask.repeat_interleave(grid // n, dim=1).repeat_interleave(grid // n, dim=2)
                t_own = pool_saliency(saliency, (grid, grid))
                t_partner = t_own.index_select(0, index)
            own = permute_blocks(own, transport_sources(t_mask > 0, t_own, self.t_eps), grid)
            partner = permute_blocks(partner, transport_sources(t_mask < 1, t_partner, self.t_eps), grid)
        height, width = inputs.shape[-2:]
        mask = block_mask.repeat_interleave(height // n, dim=1).repeat_interleave(width // n, dim=2).unsqueeze(1)
        mixed = torch.lerp(partner, own, mask.to(own.dtype))
        mixed_lam = block_mask.flatten(1).mean(dim=1)
        return MixedBatch(mixed, mix_targets(targets, index, mixed_lam), index, mixed_lam)

    def __repr__(self) -> str:
        return (
            f"PuzzleMixer(alpha={self.alpha}, n_labels={self.n_labels}, beta={self.beta}, gamma={self.gamma}, "
            f"eta={self.eta}, transport={self.transport}, t_size={self.t_size}, solver={self.solver!r})"
        )


def transport_grid(inputs: torch.Tensor, block_num: int, t_size: int) -> int:
    """The transport's grid size for a ``block_num`` mask: ``block_num``, or ``H // t_size`` when
    ``t_size`` is below the block size (then it must divide the block size, and the images be square).
    """
    height, width = inputs.shape[-2:]
    block = height // block_num
    if t_size == -1 or t_size >= block:
        return block_num
    if block % t_size or height != width:
        raise ValueError(
            f"PuzzleMix: t_size={t_size} must divide the mask's block size {block} (grid {block_num} on "
            f"{height}x{width} images) and the images must be square; use t_size=-1 or a divisor of every block "
            "size below it."
        )
    return height // t_size


def check_puzzle_inputs(inputs: torch.Tensor, block_nums: Sequence[int]) -> None:
    """Raise a clear error unless inputs are float (B, C, H, W) with H and W multiples of every block number."""
    if inputs.dim() != 4:
        raise ValueError(f"PuzzleMix needs images (B, C, H, W), got shape {tuple(inputs.shape)}.")
    if not inputs.is_floating_point():
        raise TypeError(f"PuzzleMix needs floating-point images, got {inputs.dtype}; convert them first.")
    height, width = inputs.shape[-2:]
    bad = [n for n in block_nums if height % n or width % n]
    if bad:
        fits = [n for n in range(2, min(height, width) + 1) if height % n == 0 and width % n == 0]
        raise ValueError(
            f"PuzzleMix: block_nums {bad} do not divide the image size {height}x{width}; every block number must "
            f"divide both sides (for {height}x{width}: any of {fits}, e.g. block_nums={fits[:4]})."
        )


__all__ = [
    "SOLVERS",
    "PuzzleMixer",
    "Solver",
    "check_puzzle_inputs",
    "label_prior",
    "puzzle_energy",
    "transport_grid",
]
