"""AlignMixup's feature alignment (Venkataramanan et al., CVPR 2022), torch only.

Follows shashankvkt/AlignMixup_CVPR22 (``cifar10_100/utils/OT.py`` and
``cifar10_100/models/resnet18_classifier.py``, commit 0b9de8cb): the ``r = H W`` spatial
positions of two feature maps (B, C, H, W) are matched by entropic optimal transport (Sinkhorn,
uniform marginals, squared Euclidean cost between the C-dimensional feature vectors, ``eps`` 0.1,
at most 100 log-domain iterations), the plan times ``r`` is used as a soft assignment ``R``, and
one map is re-arranged onto the other before interpolating:

* ``direction = 0``: ``lam * A + (1 - lam) * A' R^T`` (the partner aligned to the sample);
* ``direction = 1``: ``lam * A R + (1 - lam) * A'`` (the sample aligned to the partner);

with ``A`` the sample's map and ``A'`` the partner's, both as (C, r) matrices.
"""

from __future__ import annotations

import torch

# exp(-87) is about the smallest normal float32: exponents below it are clamped, so no subnormal
# number (tens of times slower on x86 CPUs) is ever produced; a term that small changes a
# log-sum-exp by less than float32 resolution.
_LOG_FLOOR = -87.0


def squared_distance_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, P, Q) cost ``sum_d (x[b, p, d] - y[b, q, d])^2`` of point sets (B, P, D) and (B, Q, D), float32.

    Computed as ``|x|^2 + |y|^2 - 2 x.y`` with one batched matrix product (clamped at 0), which
    never materialises the (B, P, Q, D) differences.
    """
    x, y = x.float(), y.float()
    cross = torch.bmm(x, y.transpose(1, 2))
    return (x.square().sum(-1).unsqueeze(-1) + y.square().sum(-1).unsqueeze(-2) - 2 * cross).clamp_min(0)


def _logsumexp(m: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` over ``dim`` with the shifted exponents floored at ``_LOG_FLOOR`` (no subnormals)."""
    top = m.amax(dim=dim, keepdim=True)
    total = torch.exp((m - top).clamp_min_(_LOG_FLOOR)).sum(dim=dim)
    return torch.log(total) + top.squeeze(dim)


def sinkhorn_plan(
    cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100, threshold: float | None = 0.1
) -> torch.Tensor:
    """Entropic OT plan (B, P, Q) between uniform marginals for a cost (B, P, Q), log-domain Sinkhorn.

    The authors' iteration (from gpeyre/SinkhornAutoDiff): with ``M = (-C + u_i + v_j) / eps``,
    ``u <- eps (log(1/P + 1e-8) - logsumexp_j M) + u``, then
    ``v <- eps (log(1/Q + 1e-8) - logsumexp_i M) + v``; the plan is ``exp(M)``. ``threshold``: stop
    when the batch mean of ``sum_i |u_i - u_i^old|`` falls below it (the authors' 0.1; this reads one
    value back to the host per iteration); None runs all ``max_iter`` iterations without a host read.
    """
    if cost.dim() != 3:
        raise ValueError(f"sinkhorn_plan needs a batched cost (B, P, Q), got shape {tuple(cost.shape)}.")
    if not eps > 0 or max_iter < 1:
        raise ValueError(f"sinkhorn_plan needs eps > 0 and max_iter >= 1, got eps={eps}, max_iter={max_iter}.")
    c = cost.float()
    b, p, q = c.shape
    log_mu = torch.log(torch.tensor(1.0 / p + 1e-8, device=c.device))
    log_nu = torch.log(torch.tensor(1.0 / q + 1e-8, device=c.device))
    u = torch.zeros(b, p, device=c.device)
    v = torch.zeros(b, q, device=c.device)

    def modified(u, v):
        return (-c + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    for _ in range(max_iter):
        previous = u
        u = eps * (log_mu - _logsumexp(modified(u, v), dim=-1)) + u
        v = eps * (log_nu - _logsumexp(modified(u, v), dim=-2)) + v
        if threshold is not None and float((u - previous).abs().sum(-1).mean()) < threshold:
            break
    m = modified(u, v)
    return torch.exp(m.clamp_min(_LOG_FLOOR)).masked_fill_(m < _LOG_FLOOR, 0.0)


def align_and_mix(
    features: torch.Tensor,
    index: torch.Tensor,
    lam: torch.Tensor,
    direction: int,
    eps: float = 0.1,
    max_iter: int = 100,
    threshold: float | None = 0.1,
) -> torch.Tensor:
    """AlignMixup of feature maps (B, C, *spatial) with their partners ``features[index]``; see the module docstring.

    ``lam`` (B,) is the sample's weight. The plan is computed in float32 without gradient (the
    authors detach it); the mix is returned in ``features``' dtype and carries gradients to both maps.
    """
    if features.dim() < 3:
        raise ValueError(f"AlignMixup needs feature maps (B, C, *spatial), got shape {tuple(features.shape)}.")
    if direction not in (0, 1):
        raise ValueError(f"direction must be 0 or 1, got {direction}.")
    b, c = features.shape[:2]
    own = features.reshape(b, c, -1)  # (B, C, r)
    partner = own.index_select(0, index.to(features.device))
    r = own.shape[-1]
    with torch.no_grad():
        plan = sinkhorn_plan(
            squared_distance_cost(own.transpose(1, 2), partner.transpose(1, 2)), eps, max_iter, threshold
        )
        assignment = (plan * r).to(features.dtype)  # (B, r, r), rows of the sample's positions
    weight = lam.to(device=features.device, dtype=features.dtype).view(b, 1, 1)
    if direction == 0:
        mixed = torch.lerp(torch.bmm(partner, assignment.transpose(1, 2)), own, weight)
    else:
        mixed = torch.lerp(partner, torch.bmm(own, assignment), weight)
    return mixed.view_as(features)


__all__ = ["align_and_mix", "sinkhorn_plan", "squared_distance_cost"]
