"""MixupMP's training loss as the authors write it, re-implemented minimally (for comparison only).

Follows ``apple/ml-MixupMP`` at commit 375aac0fff83eea45df9df0256e62d63d51b9c66, ``train.py``:
the ``method == 'mpmixup'`` branch of ``train`` with ``mixup_data(..., batch_lam=True)`` and
``mixup_criterion``, and ``main.py``'s defaults (``--alpha 1.0``, ``--npl_weight 1.0`` = r,
``--npl_prop 1.0``, per-sample weights of the observed data all 1). The batch of n observed
samples is extended by ``n_pseudo = n * npl_prop`` mixup samples of a random subset, each with its
own ``lam ~ Beta(alpha, alpha)``; one forward over the concatenation; the loss is
``mean(weights * [CE(observed); lam CE(y_a) + (1 - lam) CE(y_b)])`` with weight 1 on the observed
samples and r on the mixup samples.

The random draws (subset, partner permutation, lam) are arguments here, so a test can feed the
ones the library drew. Written per sample with a Python loop (a different route from the library's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def authors_mixupmp_loss(
    net: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    pseudo_indices: torch.Tensor,
    index: torch.Tensor,
    lam: torch.Tensor,
    npl_weight: float = 1.0,
) -> torch.Tensor:
    """The 'mpmixup' loss: observed samples ``inputs`` (n, ...) with class labels ``targets`` (n,);
    mixup samples ``lam_k x_a + (1 - lam_k) x_b`` with ``x_a = inputs[pseudo_indices]`` and
    ``x_b = x_a[index]``, ``lam`` (n_pseudo,)."""
    x_a = inputs[pseudo_indices]
    y_a = targets[pseudo_indices]
    mixed = torch.stack([lam[k] * x_a[k] + (1 - lam[k]) * x_a[index[k]] for k in range(len(x_a))])
    outputs = net(torch.cat([inputs, mixed], dim=0))
    n = len(inputs)
    losses = []
    for i in range(n):
        losses.append(F.cross_entropy(outputs[i : i + 1], targets[i : i + 1]))
    for k in range(len(x_a)):
        out = outputs[n + k : n + k + 1]
        own = F.cross_entropy(out, y_a[k : k + 1])
        partner = F.cross_entropy(out, y_a[index[k]].view(1))
        losses.append(npl_weight * (lam[k] * own + (1 - lam[k]) * partner))
    return torch.stack(losses).mean()
