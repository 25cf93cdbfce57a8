"""Temperature scaling (Guo et al. 2017): one positive scalar T that divides the logits, fitted by NLL."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["fit_temperature", "temperature_nll"]


def _nll(logits: torch.Tensor, targets: torch.Tensor, inv_t: torch.Tensor) -> torch.Tensor:
    scaled = logits * inv_t
    if targets.is_floating_point():
        return (torch.logsumexp(scaled, -1) * targets.sum(-1) - (targets * scaled).sum(-1)).mean()
    return F.cross_entropy(scaled, targets)


def temperature_nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean NLL of ``logits / temperature`` (float64); ``targets`` labels (N,) or dense (N, C)."""
    logits, targets = _prepare(logits, targets)
    return float(_nll(logits, targets, torch.tensor(1.0 / temperature, dtype=torch.float64)))


def _prepare(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) tensor, got shape {tuple(logits.shape)}.")
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"dense targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}."
            )
        targets = targets.detach().to(torch.float64)
        if not bool(torch.isfinite(targets).all()):
            raise ValueError("dense targets hold non-finite values (nan or inf); a temperature cannot be fitted.")
    elif targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be (N,) labels for logits of shape {tuple(logits.shape)}.")
    else:
        low, high = torch.aminmax(targets)
        if int(low) < 0 or int(high) >= logits.shape[1]:
            raise ValueError(
                f"targets hold labels outside [0, {logits.shape[1]}) (min {int(low)}, max {int(high)}) "
                f"for logits of {logits.shape[1]} classes."
            )
    finite = torch.isfinite(logits).all(-1)
    if not bool(finite.all()):
        rows = int((~finite).sum())
        raise ValueError(
            f"logits hold non-finite values (nan or inf) in {rows} of {logits.shape[0]} rows; no temperature "
            "makes their NLL finite. The model's outputs have diverged or overflowed (e.g. in float16): fix the "
            "model, its precision or the data before fitting a temperature."
        )
    return logits.detach().to(torch.float64), targets.detach()


def _golden_section(f, low: float, high: float, iterations: int = 48) -> float:
    """Minimise a unimodal f on [low, high] (golden-section search)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_temperature(
    logits: torch.Tensor,
    targets: torch.Tensor,
    max_iter: int = 100,
    min_temperature: float = 0.05,
    max_temperature: float = 20.0,
) -> float:
    """Fit the temperature T > 0 minimising the NLL of ``softmax(logits / T)``; returns T as a float.

    Optimises log T (so T stays positive) with L-BFGS and a strong-Wolfe line search in float64.
    NLL is convex in 1/T, hence unimodal in log T; if L-BFGS fails (an error, a non-finite
    result, a T outside ``[min_temperature, max_temperature]``, or a gradient that is not ~0 at
    its end point), a golden-section search over log T in those bounds takes over. If no T improves the NLL of
    the raw logits, T = 1 is returned. Accuracy never changes: dividing by T > 0 keeps the argmax.

    Args:
        logits: (N, C) validation logits of the model in eval mode.
        targets: (N,) labels or dense (N, C) class probabilities.
        max_iter: L-BFGS iterations.
        min_temperature: lower bound of the fallback search and of an accepted T.
        max_temperature: upper bound of the fallback search and of an accepted T.

    Raises:
        ValueError: on empty or misshapen input, labels outside ``[0, C)``, or any non-finite
            (nan/inf) logit: such outputs have no finite NLL at any T, so no temperature is
            returned for them (never a silent T = 1).
    """
    if not 0 < min_temperature < 1 < max_temperature:
        raise ValueError(
            f"need 0 < min_temperature < 1 < max_temperature, got {min_temperature} and {max_temperature}."
        )
    logits, targets = _prepare(logits, targets)
    lo, hi = math.log(min_temperature), math.log(max_temperature)

    def nll_at(log_t: float) -> float:
        value = float(_nll(logits, targets, torch.tensor(-log_t, dtype=torch.float64).exp()))
        return value if math.isfinite(value) else math.inf

    base = nll_at(0.0)
    best_log_t, best = 0.0, base

    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = _nll(logits, targets, torch.exp(-log_t))
        loss.backward()
        return loss

    converged = False
    try:
        optimizer.step(closure)
        candidate = float(log_t.detach())
        if math.isfinite(candidate) and lo <= candidate <= hi:
            value = nll_at(candidate)
            if value < best:
                best_log_t, best = candidate, value
                closure()  # gradient at the end point
                gradient = float(log_t.grad)
                converged = math.isfinite(gradient) and abs(gradient) < 1e-5
    except (RuntimeError, ValueError):  # a failed line search falls through to the bounded search
        pass

    if not converged:  # bounded fallback: NLL is unimodal in log T
        fallback = _golden_section(nll_at, lo, hi)
        value = nll_at(fallback)
        if value < best:
            best_log_t, best = fallback, value
    if not best < base:
        return 1.0
    return math.exp(best_log_t)
