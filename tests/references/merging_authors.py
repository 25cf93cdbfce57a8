"""Minimal test-only re-implementations of the merge rules in the authors' released code.

Each function follows the cited file; they operate on flattened task vectors ``(tasks, entries)``
as the authors do. Written from reading the code, not copied.

- TIES: prateeksr/TIES-Merging, ``src/ties_minimal.ipynb`` (``topk_values_mask``,
  ``resolve_zero_signs``, ``resolve_sign``, ``disjoint_merge``, ``ties_merging``).
- mergekit's TIES rules: arcee-ai/mergekit, ``mergekit/sparsify.py`` (magnitude: ``int(density *
  n)`` kept) and ``mergekit/merge_methods/generalized_task_arithmetic.py`` (``get_mask``: sign
  ``>= 0`` counts as +1).
- PCB: duguodong7/pcb-merging@31fa2dc446704b59fb7925ff70fbc65ecb2ae012, ``pcb-merging.py``
  (``normalize``, ``clamp``, ``PCB_merge``).
- TALL masks / consensus: nik-dim/tall_masks, ``src/utils/tallmask_utils.py``
  (``generate_task_masks``; consensus with ``use_ties``: ``ties_merging(merge_func="dis-sum")``).
- Fisher merging: mmatena/model_merging@f2d1677e70e353c3d28af2bbfee8f25ad1e4f61b,
  ``model_merging/merging.py`` (``_merge_with_coeffs``, ``_l2_norm_of_fisher``).
"""

from __future__ import annotations

import torch


# --- TIES (authors) ---------------------------------------------------------------------------
def ties_topk(m: torch.Tensor, density: float) -> torch.Tensor:
    d = m.shape[1]
    k = d - int(d * density)  # kthvalue index: keeps int(d * density) + 1 entries (ties kept)
    kth = m.abs().kthvalue(k, dim=1, keepdim=True).values
    return m * (m.abs() >= kth)


def ties_resolve_sign(m: torch.Tensor) -> torch.Tensor:
    sign = torch.sign(m.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    return sign


def ties_disjoint(m: torch.Tensor, sign: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    keep = torch.where(sign.unsqueeze(0) > 0, m > 0, m < 0)
    selected = m * keep
    if reduce == "sum":
        return selected.sum(dim=0)
    return selected.sum(dim=0) / (selected != 0).sum(dim=0).float().clamp(min=1)


def ties_merging(m: torch.Tensor, density: float, reduce: str = "mean") -> torch.Tensor:
    trimmed = ties_topk(m.clone(), density)
    return ties_disjoint(trimmed, ties_resolve_sign(trimmed), reduce)


# --- TIES (mergekit's rules) --------------------------------------------------------------------
def mergekit_ties(m: torch.Tensor, density: float) -> torch.Tensor:
    k = int(density * m.shape[1])
    mask = torch.zeros_like(m, dtype=torch.bool)
    mask.scatter_(1, m.abs().topk(k, dim=1).indices, True)
    trimmed = m * mask
    majority = torch.where(trimmed.sum(dim=0) >= 0, 1.0, -1.0)
    agree = trimmed.sign() == majority
    divisor = agree.sum(dim=0).float()
    divisor[divisor == 0] = 1
    return (trimmed * agree).sum(dim=0) / divisor


# --- PCB ------------------------------------------------------------------------------------
def _normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    low = x.min(dim=dim, keepdim=True).values
    high = x.max(dim=dim, keepdim=True).values
    return (x - low) / (high - low)


def _clamp(x: torch.Tensor, min_ratio: float, max_ratio: float) -> torch.Tensor:
    d = x.shape[1]
    ordered = x.sort(dim=1).values
    low = ordered[:, int(d * min_ratio)].unsqueeze(1)
    high = ordered[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1)
    return torch.clamp(x, low, high)


def pcb_merge(m: torch.Tensor, pcb_ratio: float, clamp_ratio: float = 0.0001) -> torch.Tensor:
    n = m.shape[0]
    magnitudes = _clamp(m.abs(), clamp_ratio, clamp_ratio)
    clamped = torch.sign(m) * magnitudes
    intra = torch.exp(n * _normalize(magnitudes, 1) ** 2)
    inter = torch.tanh(m * m.sum(dim=0))
    scale = _normalize(_clamp(intra * inter, 1 - pcb_ratio, 0), dim=1)
    return (clamped * scale).sum(dim=0) / scale.sum(dim=0).clamp(min=1e-12)


# --- TALL masks / consensus -----------------------------------------------------------------
def tall_masks(ptm: torch.Tensor, ft: torch.Tensor, tv: torch.Tensor, lam: float) -> torch.Tensor:
    multi = ptm + tv
    return (ptm - ft).abs() > (multi - ft).abs() * lam


def consensus(
    ptm: torch.Tensor, ft: torch.Tensor, k: int, mask_lam: float, lam: float, use_ties: bool, density: float
) -> torch.Tensor:
    tvs = ft - ptm
    merged = ties_merging(tvs, density, reduce="sum") if use_ties else tvs.sum(dim=0)
    mask = tall_masks(ptm, ft, merged, mask_lam).sum(dim=0) >= k
    return ptm + lam * merged * mask


# --- Fisher merging ---------------------------------------------------------------------------
def fisher_merge(
    variables: list[list[torch.Tensor]],
    fishers: list[list[torch.Tensor]],
    coefficients: list[float],
    floor: float,
    favor_target_model: bool,
    normalize_fishers: bool,
) -> list[torch.Tensor]:
    if normalize_fishers:
        norms = [torch.sqrt(sum((f**2).sum() for f in fisher)) for fisher in fishers]
        coefficients = [c / n for c, n in zip(coefficients, norms)]
    merged = []
    for i in range(len(variables[0])):
        lhs, rhs = [], []
        for j, (mvars, coeff, fisher) in enumerate(zip(variables, coefficients, fishers)):
            diag = fisher[i]
            if not favor_target_model or j == 0:
                diag = torch.maximum(diag, torch.tensor(floor))
            lhs.append(coeff * diag)
            rhs.append(coeff * diag * mvars[i])
        merged.append(torch.stack(rhs).sum(dim=0) / torch.stack(lhs).sum(dim=0))
    return merged
