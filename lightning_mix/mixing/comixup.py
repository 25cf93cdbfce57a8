"""Co-Mixup (Kim, Choo, Jeong and Song, ICLR 2021), torch only: batch-level saliency-guided mixing.

Follows snu-mllab/Co-Mixup (``main.py`` defaults, ``mixup.py``'s ``mixup_process`` and
``match.py``'s ``get_onehot_matrix``, ``graphcut_wrapper``, ``resolve_label``, ``obj_fn``,
``mix_input``; commit 4c14a037). A batch is cut into partitions of ``part_size`` inputs; in each
partition of ``N`` inputs, ``N`` outputs are built on an ``n x n`` block grid. Output ``m`` takes,
on each block, a weight vector over the ``N`` inputs (one-hot, or half-half between two of its
inputs); the masks minimise :func:`comixup_objective`:

* ``sum cost * mask``: the cost of input ``k`` on a block is minus its normalised saliency there
  (each map sums to 1) minus ``eta * log(prior_k)``, the prior a Dirichlet(``alpha``) draw per
  partition;
* ``beta / 2 * sum ||mask_p - mask_q||^2`` over neighbouring blocks (label smoothness);
* ``gamma * sum_(m != m') <c_m, A c_m'>``-type diversity penalty on the per-output input counts
  ``c_m`` (``A = I`` in the objective; the solver's modular term uses the compatibility matrix
  ``A = (1 - omega) I + omega * D``, with ``D`` the scaled L1 distances between the inputs' most
  salient locations, and counts above ``thres * n^2`` only).

:func:`solve_comixup` is the authors' iterative solver: outputs are updated one after the other
(the supermodular diversity term made modular given the other outputs), ``n_iter`` rounds, from a
random labelling, with the two- and three-input half-half labels from the second round on and the
``set_resolve`` cost that separates identical outputs before the last round. Each per-output grid
problem (a Potts energy) is minimised by iterated conditional modes on the device
(:func:`_potts_icm`) where the authors call gco's alpha-beta swap; the sequential loop over the
``part_size`` outputs is the documented solver loop, batched over all partitions at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from lightning_mix.mixing.batch import MixedBatch
from lightning_mix.mixing.input_saliency import pool_saliency
from lightning_mix.mixing.sampling import _log_standard_gamma

ThresholdType = Literal["hard", "soft"]
THRESHOLD_TYPES = ("hard", "soft")
# A label that is not available to a block costs this much (finite, so no inf - inf arises).
_UNAVAILABLE = 1e4
# The authors' bonus of the half-half labels over the same mix made of whole labels.
_HALF_BONUS = 5e-4


def comixup_objective(cost: torch.Tensor, masks: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The authors' ``obj_fn`` per partition (G,), for costs (G, N, n, m) and masks (G, M, n, m, N).

    ``sum cost * mask + beta / 2 * sum_edges ||mask_p - mask_q||^2 + gamma * (sum_k (sum_o c_ok)^2
    - sum_(o, k) c_ok^2)`` with ``c_ok`` the number of blocks (mask mass) of input ``k`` in output
    ``o``. ``beta`` and ``gamma`` are used as given (the solver divides the authors' values by the
    number of blocks first).
    """
    data = (cost.permute(0, 2, 3, 1).unsqueeze(1) * masks).flatten(1).sum(dim=1)
    smooth = (masks[:, :, :-1] - masks[:, :, 1:]).square().flatten(1).sum(dim=1)
    smooth = smooth + (masks[:, :, :, :-1] - masks[:, :, :, 1:]).square().flatten(1).sum(dim=1)
    counts = masks.flatten(2, 3).sum(dim=2)  # (G, M, N)
    diversity = counts.sum(dim=1).square().sum(dim=1) - counts.square().flatten(1).sum(dim=1)
    return data + beta / 2 * smooth + gamma * diversity


def saliency_peak_distance(saliency: torch.Tensor, window: int = 8) -> torch.Tensor:
    """(B, B) L1 distances between the inputs' most salient locations (the authors' ``A_dist``).

    The peak of each (B, H, W) map is the argmax of its ``window x window`` stride-1 average
    (``window`` capped at the image size); distances are in pixels of that pooled map.
    """
    k = min(window, saliency.shape[-2], saliency.shape[-1])
    z = F.avg_pool2d(saliency.float().unsqueeze(1), k, stride=1).squeeze(1)
    flat = z.flatten(1).argmax(dim=1)
    rows = torch.div(flat, z.shape[-1], rounding_mode="floor")
    points = torch.stack((rows, flat % z.shape[-1]), dim=1).float()
    return (points.unsqueeze(1) - points.unsqueeze(0)).abs().sum(dim=-1)


def compatibility_matrix(distance: torch.Tensor, omega: float) -> torch.Tensor:
    """``A = (1 - omega) I + omega * D / sum(D) * N`` per partition, for distances (G, N, N).

    Where all ``N`` peaks coincide (``sum(D) = 0``, the authors' code divides by zero) the
    distance part is zero.
    """
    n = distance.shape[-1]
    total = distance.flatten(1).sum(dim=1).view(-1, 1, 1)
    scaled = torch.where(total > 0, distance / total.clamp_min(1e-12) * n, torch.zeros_like(distance))
    eye = torch.eye(n, device=distance.device, dtype=distance.dtype)
    return (1 - omega) * eye + omega * scaled


def resolve_cost(assigned: torch.Tensor) -> torch.Tensor:
    """The authors' ``resolve_label`` for assigned-input sets (G, M, N) bool: extra costs (G, M, N).

    For each pair ``o < o'`` of outputs with the same set of inputs (of more than one input),
    output ``o`` gets cost 1 on the first input of the set and ``o'`` on the second.
    """
    a = assigned.float()
    m = a.shape[1]
    same = (a.unsqueeze(2) - a.unsqueeze(1)).abs().sum(dim=-1) == 0  # (G, M, M)
    upper = torch.ones(m, m, dtype=torch.bool, device=a.device).triu(diagonal=1)
    coincide = same & upper
    multi = a.sum(dim=-1) > 1
    first = a.argmax(dim=-1)
    second = a.scatter(-1, first.unsqueeze(-1), 0.0).argmax(dim=-1)
    extra = torch.zeros_like(a)
    extra.scatter_(-1, first.unsqueeze(-1), (coincide.any(dim=2) & multi).float().unsqueeze(-1))
    later = (coincide.any(dim=1) & multi).float().unsqueeze(-1)
    return extra.scatter_add(-1, second.unsqueeze(-1), later).clamp_max(1.0)


def _potts_energy(labels: torch.Tensor, unary: torch.Tensor, pairwise: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) ``sum unary[p, l_p] + beta * sum_edges pairwise[l_p, l_q]`` for labels (B, n, m)."""
    n_labels = unary.shape[-1]
    data = unary.gather(-1, labels.unsqueeze(-1)).squeeze(-1).flatten(1).sum(dim=1)
    table = pairwise.flatten(1)
    vertical = table.gather(1, (labels[:, :-1] * n_labels + labels[:, 1:]).flatten(1)).sum(dim=1)
    horizontal = table.gather(1, (labels[:, :, :-1] * n_labels + labels[:, :, 1:]).flatten(1)).sum(dim=1)
    return data + beta * (vertical + horizontal)


def _potts_icm(
    unary: torch.Tensor, pairwise: torch.Tensor, beta: float, starts: Sequence[torch.Tensor], sweeps: int
) -> torch.Tensor:
    """Labels (B, n, m) of a Potts-type grid energy by checkerboard ICM from each start, the best kept.

    ``unary`` (B, n, m, L), ``pairwise`` (B, L, L) symmetric; each start (B, n, m) int64.
    """
    b, n, m, n_labels = unary.shape
    s = len(starts)
    labels = torch.stack(list(starts), dim=1).reshape(b * s, n, m)
    u = unary.unsqueeze(1).expand(b, s, n, m, n_labels).reshape(b * s, n, m, n_labels)
    pw = pairwise.unsqueeze(1).expand(b, s, n_labels, n_labels).reshape(b * s, n_labels, n_labels)
    rows_of = torch.arange(b * s, device=unary.device).view(-1, 1, 1)
    grid_r = torch.arange(n, device=unary.device).view(n, 1)
    grid_c = torch.arange(m, device=unary.device).view(1, m)
    colours = [((grid_r + grid_c) % 2) == c for c in (0, 1)]
    for _ in range(sweeps):
        for colour in colours:
            near = pw[rows_of, labels]  # (BS, n, m, L): pairwise row of each cell's current label
            cost = u.clone()
            cost[:, 1:] += beta * near[:, :-1]
            cost[:, :-1] += beta * near[:, 1:]
            cost[:, :, 1:] += beta * near[:, :, :-1]
            cost[:, :, :-1] += beta * near[:, :, 1:]
            labels = torch.where(colour, cost.argmin(dim=-1), labels)
    energies = _potts_energy(labels, u, pw, beta).view(b, s)
    return labels.view(b, s, n, m)[torch.arange(b, device=unary.device), energies.argmin(dim=1)]


def _half_labels(counts: torch.Tensor, use: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The half-half labels of one output per partition: input pairs (G, 3, 2) and validity (G, 3).

    As the authors' ``graphcut_wrapper``: with two assigned inputs ``a < b`` one label (a, b); with
    three or more, the three most used ``a < b < c`` give (a, b), (a, c), (b, c); none in round 0.
    """
    g, n_inputs = counts.shape
    assigned = (counts > 0).sum(dim=1)
    valid = torch.zeros(g, 3, dtype=torch.bool, device=counts.device)
    pairs = torch.zeros(g, 3, 2, dtype=torch.long, device=counts.device)
    if not use or n_inputs < 2:
        return pairs, valid
    two = counts.topk(2, dim=1).indices.sort(dim=1).values
    pairs[:, :, 0], pairs[:, :, 1] = two[:, :1], two[:, 1:]
    valid[:, 0] = assigned == 2
    if n_inputs >= 3:
        three = counts.topk(3, dim=1).indices.sort(dim=1).values
        triple = torch.stack((three[:, [0, 1]], three[:, [0, 2]], three[:, [1, 2]]), dim=1)
        many = assigned >= 3
        pairs = torch.where(many.view(-1, 1, 1), triple, pairs)
        valid = valid | many.view(-1, 1)
    return pairs, valid


def _solve_output(
    cost: torch.Tensor, counts: torch.Tensor, current: torch.Tensor, beta: float, half: bool, sweeps: int
) -> torch.Tensor:
    """One output's mask (G, n, m, N) given its costs (G, N, n, m) with the modular penalty added."""
    g, n_inputs, n, m = cost.shape
    device = cost.device
    pairs, valid = _half_labels(counts, half)
    unary_inputs = cost.permute(0, 2, 3, 1)  # (G, n, m, N)
    pair_cost = (
        0.5
        * (
            unary_inputs.unsqueeze(-2)
            .expand(g, n, m, 3, n_inputs)
            .gather(-1, pairs.view(g, 1, 1, 3, 2).expand(g, n, m, 3, 2))
            .sum(dim=-1)
        )
        - _HALF_BONUS
    )
    pair_cost = torch.where(valid.view(g, 1, 1, 3), pair_cost, torch.full_like(pair_cost, _UNAVAILABLE))
    unary = torch.cat((unary_inputs, pair_cost), dim=-1)  # (G, n, m, N + 3)
    decode = torch.zeros(g, n_inputs + 3, n_inputs, device=device)
    decode[:, :n_inputs] = torch.eye(n_inputs, device=device)
    halves = torch.zeros(g, 3, n_inputs, device=device).scatter_add(
        -1, pairs, torch.full(pairs.shape, 0.5, device=device)
    )
    decode[:, n_inputs:] = halves * valid.unsqueeze(-1)
    total = n_inputs + 3
    pairwise = 1.0 - torch.eye(total, device=device).expand(g, total, total).clone()
    near = (halves > 0) & valid.unsqueeze(-1)  # (G, 3, N): a half label next to one of its inputs
    quarter = torch.where(near, torch.full_like(halves, 0.25), torch.ones_like(halves))
    pairwise[:, n_inputs:, :n_inputs] = quarter
    pairwise[:, :n_inputs, n_inputs:] = quarter.transpose(1, 2)
    constant = [torch.full((g, n, m), k, dtype=torch.long, device=device) for k in range(total)]
    starts = [unary.argmin(dim=-1), current.argmax(dim=-1), *constant]
    labels = _potts_icm(unary, pairwise, beta, starts, sweeps)
    return decode[torch.arange(g, device=device).view(g, 1, 1), labels]


def solve_comixup(
    cost: torch.Tensor,
    compatibility: torch.Tensor,
    beta: float = 0.32,
    gamma: float = 1.0,
    thres: float = 0.83,
    thres_type: ThresholdType = "hard",
    set_resolve: bool = True,
    n_iter: int = 4,
    sweeps: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masks (G, N, n, m, N) of the authors' iterative solver, for costs (G, N, n, m) and ``A`` (G, N, N).

    ``cost`` already holds the prior term; ``beta``, ``gamma`` and ``thres`` are the authors'
    (unscaled) values: ``beta`` and ``gamma`` are divided by the number of blocks ``n m`` and
    ``thres`` multiplied by it, as in ``get_onehot_matrix``. Differences from the authors: each
    per-output problem is solved by :func:`_potts_icm` (from the unary minimum, the output's
    current labels and every constant labelling) instead of gco's swap, and all ``n_iter`` rounds
    run (the authors stop early when the objective changes by less than 1e-6 relative, which would
    need a host sync).
    """
    g, n_inputs, n, m = cost.shape
    blocks = n * m
    beta_s, gamma_s, thres_s = beta / blocks, gamma / blocks, thres * blocks
    device = cost.device
    init = torch.randint(n_inputs, (g, n_inputs, n, m), generator=generator, device=device)
    masks = F.one_hot(init, n_inputs).float()  # (G, M=N, n, m, N)
    penalty = masks.flatten(1, 3).sum(dim=1)  # (G, N): blocks of each input over all outputs
    add_cost = None
    for round_idx in range(n_iter):
        for out in range(n_inputs):
            counts = masks[:, out].flatten(1, 2).sum(dim=1)
            penalty = penalty - counts
            spread = torch.einsum("gkj,gj->gk", compatibility, penalty)
            over = (spread > thres_s).float()
            modular = 2 * gamma_s * over * (spread if thres_type == "hard" else spread - thres_s)
            out_cost = cost + modular.view(g, n_inputs, 1, 1)
            if add_cost is not None:
                out_cost = out_cost + gamma_s * add_cost[:, out].view(g, n_inputs, 1, 1)
            new = _solve_output(out_cost, counts, masks[:, out], beta_s, round_idx > 0, sweeps)
            masks[:, out] = new
            penalty = penalty + new.flatten(1, 2).sum(dim=1)
        if set_resolve and round_idx == n_iter - 2:
            add_cost = resolve_cost(masks.flatten(2, 3).sum(dim=2) > 0)
    return masks


def dirichlet_log_prior(
    alpha: float, groups: int, n_inputs: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(G, N) ``log(p + 1e-8)`` of one Dirichlet(alpha, ..., alpha) draw ``p`` per partition."""
    log_g = _log_standard_gamma(float(alpha), groups * n_inputs, generator, device).view(groups, n_inputs)
    p = torch.softmax(log_g, dim=1)
    return torch.log(p + 1e-8).float()


class CoMixupResult(NamedTuple):
    """A Co-Mixup batch: the :class:`MixedBatch` and the full mixing matrix.

    ``weights`` (B, B): ``weights[o, k]`` is the share of input ``k`` in output ``o`` (rows sum to
    1, zero outside ``o``'s partition); ``mixed.targets = weights @ targets`` exactly.
    ``mixed.index[o]`` is the input with the largest share in output ``o`` (the dominant input) and
    ``mixed.lam[o]`` that share; output ``o`` is not built from input ``o``, so ``mixed.targets``
    is not ``lam t + (1 - lam) t[index]`` unless the output mixes two inputs only.
    ``block_masks``: the per-block weights (G, N, n, n, N) of each run of equal-size partitions
    (:meth:`CoMixer.partitions`), in batch order.
    """

    mixed: MixedBatch
    weights: torch.Tensor
    block_masks: tuple[torch.Tensor, ...]


class CoMixer:
    """Co-Mixup on a batch, given its input saliency (B, H, W); see the module docstring.

    ``mixer(inputs, targets, saliency, generator) -> CoMixupResult``. Inputs (B, C, H, W) float with
    ``H`` and ``W`` multiples of ``block_num``; targets dense (B, K).

    Args:
        alpha: Dirichlet concentration of the prior (authors' ``mixup_alpha``: 2.0).
        block_num: blocks per side (authors' ``m_block_num``: 4).
        part_size: inputs per partition (authors' ``m_part``: 20); the last partition takes the rest.
        beta: label smoothness (0.32); gamma: diversity penalty (1.0); eta: prior weight (0.05).
        thres: over-penalisation threshold tau as a fraction of the blocks (0.83); thres_type:
            ``"hard"`` (authors) or ``"soft"``.
        omega: weight of the saliency-peak distance in the compatibility matrix (0.001).
        set_resolve: separate identical outputs before the last round (True).
        n_iter: rounds of the solver (authors' ``m_niter``: 4).
        sweeps: ICM sweeps per per-output problem.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        block_num: int = 4,
        part_size: int = 20,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        thres: float = 0.83,
        thres_type: ThresholdType = "hard",
        omega: float = 0.001,
        set_resolve: bool = True,
        n_iter: int = 4,
        sweeps: int = 4,
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"Co-Mixup: alpha must be positive, got {alpha}.")
        if block_num < 1 or part_size < 2:
            raise ValueError(
                f"Co-Mixup: block_num must be at least 1 and part_size at least 2, got {block_num} and {part_size}."
            )
        for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta), ("thres", thres)):
            if value < 0:
                raise ValueError(f"Co-Mixup: {name} must be non-negative, got {value}.")
        if not 0.0 <= omega <= 1.0:
            raise ValueError(f"Co-Mixup: omega must lie in [0, 1], got {omega}.")
        if thres_type not in THRESHOLD_TYPES:
            raise ValueError(f"Co-Mixup: thres_type must be one of {THRESHOLD_TYPES}, got {thres_type!r}.")
        if n_iter < 1 or sweeps < 1:
            raise ValueError(f"Co-Mixup: n_iter and sweeps must be at least 1, got {n_iter} and {sweeps}.")
        self.alpha, self.block_num, self.part_size = float(alpha), int(block_num), int(part_size)
        self.beta, self.gamma, self.eta = float(beta), float(gamma), float(eta)
        self.thres, self.thres_type, self.omega = float(thres), thres_type, float(omega)
        self.set_resolve, self.n_iter, self.sweeps = bool(set_resolve), int(n_iter), int(sweeps)

    def partitions(self, batch_size: int) -> list[tuple[int, int, int]]:
        """``(start, groups, size)`` runs of equal partitions covering the batch (at most two runs)."""
        full, rest = divmod(batch_size, self.part_size)
        runs = [(0, full, self.part_size)] if full else []
        if rest:
            runs.append((full * self.part_size, 1, rest))
        return runs

    def __call__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        saliency: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> CoMixupResult:
        check_comixup_inputs(inputs, self.block_num)
        b, device, n = inputs.shape[0], inputs.device, self.block_num
        if b < 2:
            raise ValueError("Co-Mixup needs at least 2 samples per batch to mix.")
        sal = pool_saliency(saliency, (n, n))
        distance = saliency_peak_distance(saliency)
        height, width = inputs.shape[-2:]
        outputs, weights, masks_all = [], torch.zeros(b, b, device=device), []
        for start, groups, size in self.partitions(b):
            stop = start + groups * size
            if size < 2:  # a lone last sample has nothing to mix with: kept as it is
                outputs.append(inputs[start:stop])
                weights[start, start] = 1.0
                continue
            cost = -sal[start:stop].view(groups, size, n, n)
            cost = cost - self.eta / (n * n) * dirichlet_log_prior(self.alpha, groups, size, generator, device).view(
                groups, size, 1, 1
            )
            blocks = distance[start:stop, start:stop].view(groups, size, groups, size)
            blocks = blocks.diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (G, N, N): within each partition
            compat = compatibility_matrix(blocks, self.omega)
            masks = solve_comixup(
                cost,
                compat,
                self.beta,
                self.gamma,
                self.thres,
                self.thres_type,
                self.set_resolve,
                self.n_iter,
                self.sweeps,
                generator,
            )
            masks_all.append(masks)
            pixel = masks.repeat_interleave(height // n, dim=2).repeat_interleave(width // n, dim=3)
            group_inputs = inputs[start:stop].view(groups, size, *inputs.shape[1:])
            mixed = torch.einsum("gohwk,gkchw->gochw", pixel.to(inputs.dtype), group_inputs)
            outputs.append(mixed.reshape(groups * size, *inputs.shape[1:]))
            shares = masks.mean(dim=(2, 3))  # (G, N, N)
            base = start + size * torch.arange(groups, device=device).view(groups, 1, 1)
            within = torch.arange(size, device=device)
            weights[base + within.view(1, size, 1), base + within.view(1, 1, size)] = shares
        mixed_inputs = torch.cat(outputs, dim=0)
        mixed_targets = weights.to(targets.dtype) @ targets
        lam, index = weights.max(dim=1)
        return CoMixupResult(MixedBatch(mixed_inputs, mixed_targets, index, lam), weights, tuple(masks_all))

    def __repr__(self) -> str:
        return (
            f"CoMixer(alpha={self.alpha}, block_num={self.block_num}, part_size={self.part_size}, beta={self.beta}, "
            f"gamma={self.gamma}, eta={self.eta}, thres={self.thres}, omega={self.omega}, n_iter={self.n_iter})"
        )


def check_comixup_inputs(inputs: torch.Tensor, block_num: int) -> None:
    """Raise a clear error unless inputs are float (B, C, H, W) with H and W multiples of ``block_num``."""
    if inputs.dim() != 4:
        raise ValueError(f"Co-Mixup needs images (B, C, H, W), got shape {tuple(inputs.shape)}.")
    if not inputs.is_floating_point():
        raise TypeError(f"Co-Mixup needs floating-point images, got {inputs.dtype}; convert them first.")
    height, width = inputs.shape[-2:]
    if height % block_num or width % block_num:
        fits = [k for k in range(2, min(height, width) + 1) if height % k == 0 and width % k == 0]
        raise ValueError(
            f"Co-Mixup: block_num {block_num} does not divide the image size {height}x{width}; choose one that "
            f"divides both sides (for {height}x{width}: any of {fits})."
        )


__all__ = [
    "THRESHOLD_TYPES",
    "CoMixer",
    "CoMixupResult",
    "ThresholdType",
    "check_comixup_inputs",
    "comixup_objective",
    "compatibility_matrix",
    "dirichlet_log_prior",
    "resolve_cost",
    "saliency_peak_distance",
    "solve_comixup",
]
