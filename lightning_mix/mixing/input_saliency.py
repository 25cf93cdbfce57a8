"""Gradient saliency of the inputs (torch only): the clean-batch pass PuzzleMix and its kin read.

:func:`input_gradient_saliency` differentiates the loss with respect to the *inputs only*
(``torch.autograd.grad(loss, inputs)``): no parameter's ``.grad`` is written, and a module wrapped
in DistributedDataParallel sees no backward over its parameters (call it on the bare module, not
on the DDP wrapper, so DDP's reducer is never armed). :func:`pool_saliency` brings a saliency map
to a block grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

ChannelReduce = Literal["rms", "mean_abs", "max_abs"]
CHANNEL_REDUCES = ("rms", "mean_abs", "max_abs")


def reduce_channels(gradient: torch.Tensor, channel_reduce: ChannelReduce = "rms") -> torch.Tensor:
    """A (B, C, *spatial) input gradient reduced over channels to a non-negative (B, *spatial) map.

    ``"rms"``: ``sqrt(mean_c g^2)`` (PuzzleMix's ``torch.sqrt(torch.mean(grad ** 2, dim=1))``);
    ``"mean_abs"``: ``mean_c |g|``; ``"max_abs"``: ``max_c |g|``. Computed in float32.
    """
    g = gradient.float()
    if channel_reduce == "rms":
        return g.square().mean(dim=1).sqrt()
    if channel_reduce == "mean_abs":
        return g.abs().mean(dim=1)
    if channel_reduce == "max_abs":
        return g.abs().amax(dim=1)
    raise ValueError(f"channel_reduce must be one of {CHANNEL_REDUCES}, got {channel_reduce!r}.")


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch-mean cross-entropy of logits (B, K) against dense targets (B, K) or class indices (B,)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    if targets.is_floating_point():
        return -(targets.float() * log_p).sum(dim=-1).mean()
    return F.nll_loss(log_p, targets)


def input_gradient(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = soft_target_loss,
    keep_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d loss / d inputs, loss)`` with ``loss = loss_fn(forward(inputs), targets)``.

    The gradient is taken with ``torch.autograd.grad`` with respect to a detached copy of
    ``inputs`` only, so parameters' ``.grad`` stay as they were. With ``keep_graph`` the graph is
    retained and the returned loss still carries it (a later backward of that loss reaches the
    parameters: PuzzleMix's clean loss); otherwise the loss is detached and the graph freed.
    Gradients are enabled inside even when the caller disabled them; whatever autocast context is
    active around the call applies to ``forward``.
    """
    if not inputs.is_floating_point():
        raise TypeError(
            f"input-gradient saliency needs floating-point inputs, got {inputs.dtype}; convert the "
            "images first (e.g. inputs.float() / 255)."
        )
    if inputs.dim() < 3:
        raise ValueError(f"saliency needs inputs (B, C, *spatial), got shape {tuple(inputs.shape)}.")
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(forward(x), targets)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}.")
        (gradient,) = torch.autograd.grad(loss, [x], retain_graph=keep_graph)
    return gradient, (loss if keep_graph else loss.detach())


def input_gradient_saliency(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = soft_target_loss,
    channel_reduce: ChannelReduce = "rms",
) -> torch.Tensor:
    """Saliency (B, *spatial), float32: ``|d loss / d inputs|`` reduced over channels.

    ``loss = loss_fn(forward(inputs), targets)`` (default: batch-mean cross-entropy, PuzzleMix's
    ``criterion_batch(...).mean()``), differentiated as :func:`input_gradient` does, so parameters'
    ``.grad`` stay as they were and nothing else of the graph is kept.

    Args:
        forward: the model (an ``nn.Module`` or any callable returning logits).
        inputs: float tensor (B, C, *spatial).
        targets: what ``loss_fn`` takes with the logits (dense (B, K) or class indices (B,) for
            the default).
        loss_fn: scalar loss of ``(logits, targets)``.
        channel_reduce: see :func:`reduce_channels`.
    """
    gradient, _ = input_gradient(forward, inputs, targets, loss_fn)
    return reduce_channels(gradient, channel_reduce)


def pool_saliency(saliency: torch.Tensor, grid: tuple[int, int], normalize: bool = True) -> torch.Tensor:
    """Average a (B, H, W) saliency map over a ``grid`` of blocks: (B, grid[0], grid[1]), float32.

    With ``normalize`` each sample's block saliencies sum to 1 (PuzzleMix's
    ``grad_pool / grad_pool.sum()``); an all-zero map becomes uniform instead of NaN.
    """
    pooled = F.adaptive_avg_pool2d(saliency.float().unsqueeze(1), grid).squeeze(1)
    if not normalize:
        return pooled
    total = pooled.flatten(1).sum(dim=1).view(-1, 1, 1)
    uniform = torch.full_like(pooled, 1.0 / (grid[0] * grid[1]))
    return torch.where(total > 0, pooled / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)


__all__ = [
    "CHANNEL_REDUCES",
    "ChannelReduce",
    "input_gradient",
    "input_gradient_saliency",
    "pool_saliency",
    "reduce_channels",
    "soft_target_loss",
]
