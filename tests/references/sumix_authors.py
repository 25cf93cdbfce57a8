"""SUMix's loss as the authors write it, re-implemented minimally (for comparison only).

Follows ``JinXins/SUMix`` at commit 0469ec2cf2b4c054b11e3f69bb1bcb0fd422881b,
``openmixup/models/heads/cls_mixup_head.py``, ``ClsUncertainMixupHead.IN_loss`` (with ``is_norm=True``),
called from ``openmixup/models/classifiers/mixup_classification.py`` (``forward_mix`` with ``is_IN=True``):

* ``semantic_one, semantic_mix``: softmax of the detached clean and mixed class logits;
  ``semantic_one_ = semantic_one[rand_index]`` (a copy, taken before the next step);
* a Python loop sets ``semantic_one[i, y_b[i]] = 0`` and ``semantic_one_[i, y_a[i]] = 0``;
* ``alpha = l2_norm(softmax(semantic_mix - semantic_one)) * N``, ``alpha_`` likewise with ``semantic_one_``;
* ``beta = u_one + u_mix``, ``beta_ = u_one[rand_index] + u_mix`` where ``u = l2_norm(softmax(uncertain(x)))``;
* ``lam_a[i] = lam * exp(-alpha)[i, y_a[i]]``, ``lam_b[i] = (1 - lam) * exp(-alpha_)[i, y_b[i]]``,
  ``lam_a = lam_a / (lam_a + lam_b)``, ``lam_b = 1 - lam_a``;
* ``loss = mean(CE(cls_mix, y_a) * lam_a + CE(cls_mix, y_b) * lam_b)
  + gama * (CE(exp(-(beta + alpha)), y_a) * lam + CE(exp(-(beta_ + alpha_)), y_b) * (1 - lam))``
  where openmixup's ``CrossEntropyLoss(..., avg_factor=N)`` returns the batch mean (a scalar), so
  the first term is ``mean(CE_a) * mean(lam_a) + mean(CE_b) * mean(lam_b)``.

``lam`` is one number per batch, as the authors' mixers give. Written with Python loops over the
samples and the direct ``a / (a + b)`` form on purpose (a different route from the library's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _l2_norm(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x**2).sum(1)).view(-1, 1)


def authors_in_loss(
    clean_logits: torch.Tensor,
    mixed_logits: torch.Tensor,
    clean_uncertain_logits: torch.Tensor,
    mixed_uncertain_logits: torch.Tensor,
    y_a: torch.Tensor,
    rand_index: torch.Tensor,
    lam: float,
    gama: float,
) -> dict[str, torch.Tensor]:
    """Returns ``lam_a`` (N,), ``alpha``/``alpha_`` (N, C), the classification term ``cls``, the
    regulariser ``reg`` (before ``gama``) and ``loss``, all in float64."""
    n = y_a.shape[0]
    y_b = y_a[rand_index]
    one = F.softmax(clean_logits.detach().double(), dim=-1)
    mix = F.softmax(mixed_logits.detach().double(), dim=-1)
    one_ = one[rand_index].clone()
    one = one.clone()
    for i in range(n):
        one[i, y_b[i]] = 0
        one_[i, y_a[i]] = 0
    alpha = _l2_norm(F.softmax(mix - one, dim=-1)) * n
    alpha_ = _l2_norm(F.softmax(mix - one_, dim=-1)) * n
    u_one = _l2_norm(F.softmax(clean_uncertain_logits.double(), dim=-1))
    u_mix = _l2_norm(F.softmax(mixed_uncertain_logits.double(), dim=-1))
    beta = u_one + u_mix
    beta_ = u_one[rand_index] + u_mix
    in_a, in_b = torch.exp(-alpha), torch.exp(-alpha_)
    lam_a = torch.empty(n, dtype=torch.float64)
    lam_b = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        lam_a[i] = lam * in_a[i, y_a[i]]
        lam_b[i] = (1 - lam) * in_b[i, y_b[i]]
    lam_a = lam_a / (lam_a + lam_b)
    lam_b = 1 - lam_a
    ce_a = F.cross_entropy(mixed_logits.double(), y_a)  # a batch mean, as avg_factor=N gives
    ce_b = F.cross_entropy(mixed_logits.double(), y_b)
    cls = torch.mean(ce_a * lam_a + ce_b * lam_b)
    reg = F.cross_entropy(torch.exp(-(beta + alpha)), y_a) * lam + F.cross_entropy(
        torch.exp(-(beta_ + alpha_)), y_b
    ) * (1 - lam)
    return {"lam_a": lam_a, "alpha": alpha, "alpha_": alpha_, "cls": cls, "reg": reg, "loss": cls + gama * reg}
