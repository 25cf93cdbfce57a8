"""Minimal re-implementation of Co-Mixup's objective and helpers, for comparison in tests.

Follows snu-mllab/Co-Mixup ``match.py`` at commit 4c14a037e06a2aea47dbc4f36e885f40bf311d0c:
``obj_fn`` (objective without thresholding), ``resolve_label`` (the set_resolve post-processing),
``mix_input`` (images and soft targets from the block masks, ``sc=None``) and the hard-threshold
modular penalty of ``get_onehot_matrix``; and ``utils.py``'s ``distance(..., 'l1')`` with
``main.py``'s saliency-peak location (``avg_pool2d(sc, 8, stride=1)``, argmax). One partition at
a time, written with explicit loops over outputs, blocks and edges, CPU only.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def objective(cost, masks, beta, gamma):
    """obj_fn: cost (N, n, n), masks (M, n, n, N) -> float."""
    n_out, height, width, n_in = masks.shape
    total = 0.0
    for o in range(n_out):
        for r in range(height):
            for c in range(width):
                total += float((cost[:, r, c] * masks[o, r, c]).sum())
                if r + 1 < height:
                    total += beta / 2 * float(((masks[o, r, c] - masks[o, r + 1, c]) ** 2).sum())
                if c + 1 < width:
                    total += beta / 2 * float(((masks[o, r, c] - masks[o, r, c + 1]) ** 2).sum())
    counts = [masks[o].reshape(-1, n_in).sum(0) for o in range(n_out)]
    for o1 in range(n_out):
        for o2 in range(n_out):
            if o1 != o2:
                total += gamma * float((counts[o1] * counts[o2]).sum())
    return total


def resolve_label(assigned):
    """resolve_label: assigned (M, N) 0/1 -> extra costs (M, N)."""
    n_out = assigned.shape[0]
    add = torch.zeros_like(assigned)
    for i1 in range(n_out):
        for i2 in range(i1 + 1, n_out):
            if torch.equal(assigned[i1], assigned[i2]):
                nonzeros = assigned[i1].nonzero().flatten()
                if len(nonzeros) > 1:
                    add[i1, nonzeros[0]] = 1.0
                    add[i2, nonzeros[1]] = 1.0
    return add


def mix_input(masks, inputs, targets):
    """mix_input with sc=None: masks (M, n, n, N), inputs (N, C, H, W), targets (N, K)."""
    n_out = masks.shape[0]
    size = inputs.shape[-1]
    up = F.interpolate(masks.permute(0, 3, 1, 2), size=size, mode="nearest")  # (M, N, H, W)
    out = torch.stack([sum(up[o, k] * inputs[k] for k in range(inputs.shape[0])) for o in range(n_out)])
    soft = torch.stack([(masks[o].reshape(-1, masks.shape[-1]) @ targets).sum(0) for o in range(n_out)])
    return out, soft / soft.sum(-1, keepdim=True)


def modular_penalty(A, others_counts, gamma_scaled, thres_scaled):
    """The hard-threshold modular penalty of get_onehot_matrix for the other outputs' counts (N,)."""
    spread = A @ others_counts
    return 2 * gamma_scaled * (spread > thres_scaled).float() * spread


def peak_distance(saliency):
    """L1 distances between the argmax locations of avg_pool2d(saliency, 8, stride=1)."""
    z = F.avg_pool2d(saliency.unsqueeze(1), kernel_size=8, stride=1).squeeze(1)
    width = z.shape[-1]
    points = []
    for i in range(z.shape[0]):
        flat = int(z[i].reshape(-1).argmax())
        points.append((flat // width, flat % width))
    n = len(points)
    return torch.tensor(
        [[abs(points[a][0] - points[b][0]) + abs(points[a][1] - points[b][1]) for b in range(n)] for a in range(n)],
        dtype=torch.float32,
    )


def brute_force_minimum(cost, beta, gamma, n_out):
    """Smallest objective over all one-hot labellings of ``n_out`` outputs (tiny instances only).

    Every labelling at once: for one-hot masks the smoothness term is ``beta`` per edge whose two
    blocks differ, and the diversity term ``gamma * sum_(o != o') <c_o, c_o'>``.
    """
    n_in, height, width = cost.shape
    cells = n_out * height * width
    labels = torch.tensor(list(itertools.product(range(n_in), repeat=cells))).view(-1, n_out, height, width)
    data = cost.permute(1, 2, 0).unsqueeze(0).unsqueeze(0).expand(labels.shape[0], n_out, height, width, n_in)
    data = data.gather(-1, labels.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
    edges = (labels[:, :, 1:] != labels[:, :, :-1]).flatten(1).sum(1)
    edges = edges + (labels[:, :, :, 1:] != labels[:, :, :, :-1]).flatten(1).sum(1)
    counts = F.one_hot(labels.flatten(2), n_in).sum(2).float()  # (L, M, N)
    cross = counts.sum(1).square().sum(1) - counts.square().flatten(1).sum(1)
    return float((data + beta * edges + gamma * cross).min())
