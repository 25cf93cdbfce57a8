"""Minimal CPU re-implementation of AlignMixup's Sinkhorn and aligned mix, for comparison in tests.

Follows shashankvkt/AlignMixup_CVPR22 at commit 0b9de8cb273c012104ebdbbea0ab45a85eae3836:
``cifar10_100/utils/OT.py`` (``SinkhornDistance.forward``, ``M``, ``_cost_matrix``) and
``cifar10_100/models/resnet18_classifier.py`` (``mixup_aligned``, with the permutation and the
direction passed in instead of drawn). ``.cuda()`` calls dropped.
"""

from __future__ import annotations

import torch


def sinkhorn(x, y, eps=0.1, max_iter=100):
    C = torch.sum(torch.abs(x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2, -1)
    x_points, y_points = x.shape[-2], y.shape[-2]
    batch_size = 1 if x.dim() == 2 else x.shape[0]
    mu = torch.empty(batch_size, x_points, dtype=torch.float).fill_(1.0 / x_points).squeeze()
    nu = torch.empty(batch_size, y_points, dtype=torch.float).fill_(1.0 / y_points).squeeze()
    u = torch.zeros_like(mu)
    v = torch.zeros_like(nu)

    def M(C, u, v):
        return (-C + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    for _ in range(max_iter):
        u1 = u
        u = eps * (torch.log(mu + 1e-8) - torch.logsumexp(M(C, u, v), dim=-1)) + u
        v = eps * (torch.log(nu + 1e-8) - torch.logsumexp(M(C, u, v).transpose(-2, -1), dim=-1)) + v
        err = (u - u1).abs().sum(-1).mean()
        if err.item() < 1e-1:
            break
    return torch.exp(M(C, u, v))


def mixup_aligned(out, indices, lam, align_mix):
    feat1 = out.view(out.shape[0], out.shape[1], -1)
    feat2 = out[indices].view(out.shape[0], out.shape[1], -1)
    P = sinkhorn(feat1.permute(0, 2, 1), feat2.permute(0, 2, 1)).detach()
    P = P * (out.size(2) * out.size(3))
    if align_mix == 0:
        f1 = torch.matmul(feat2, P.permute(0, 2, 1)).view(out.shape)
        return feat1.view(out.shape) * lam + f1 * (1 - lam)
    f2 = torch.matmul(feat1, P).view(out.shape)
    return f2 * lam + feat2.view(out.shape) * (1 - lam)
