"""Combining the class probabilities of several models: a (weighted) average in probability space.

``member_log_probs`` is an ``(M, N, C)`` tensor of the members' log-probabilities. The ensemble
predicts ``p = sum_m w_m p_m`` with weights on the simplex; :func:`fit_ensemble_weights` learns
them on held-out data by minimising the NLL of ``p`` (the way AWARE-NET learns its ensemble
weights, here with a softmax parametrisation and L-BFGS in float64).
"""

from __future__ import annotations

import math

import torch

__all__ = ["combine_log_probs", "fit_ensemble_weights"]


def _check(member_log_probs: torch.Tensor) -> None:
    if member_log_probs.dim() != 3 or member_log_probs.shape[0] < 1:
        raise ValueError(f"member_log_probs must have shape (M, N, C), got {tuple(member_log_probs.shape)}.")


def combine_log_probs(member_log_probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Log of ``sum_m w_m p_m`` (``(N, C)``), computed with logsumexp; uniform weights when ``None``."""
    _check(member_log_probs)
    m = member_log_probs.shape[0]
    if weights is None:
        log_w = torch.full((m,), -math.log(m), dtype=member_log_probs.dtype, device=member_log_probs.device)
    else:
        if weights.shape != (m,) or (weights < 0).any():
            raise ValueError(f"weights must be {m} non-negative numbers, got {weights.tolist()}.")
        log_w = (weights / weights.sum()).to(member_log_probs).log()
    return torch.logsumexp(member_log_probs + log_w[:, None, None], dim=0)


def fit_ensemble_weights(member_log_probs: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> torch.Tensor:
    """Weights on the simplex that minimise the NLL of the weighted average of the members' probabilities.

    Optimises unconstrained logits ``a`` (``w = softmax(a)``) with L-BFGS (strong-Wolfe line
    search) in float64, starting from uniform weights. The objective is convex in ``w``; the
    softmax keeps ``w`` feasible. Returns float64 weights of shape ``(M,)`` on the CPU.
    """
    _check(member_log_probs)
    if targets.shape != member_log_probs.shape[1:2]:
        raise ValueError(f"targets must be ({member_log_probs.shape[1]},) labels, got {tuple(targets.shape)}.")
    log_p = member_log_probs.detach().double().cpu()
    picked = log_p.gather(-1, targets.cpu().long()[None, :, None].expand(log_p.shape[0], -1, 1)).squeeze(-1)  # (M, N)
    logits = torch.zeros(log_p.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -torch.logsumexp(picked + torch.log_softmax(logits, 0)[:, None], dim=0).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.softmax(logits.detach(), 0)
