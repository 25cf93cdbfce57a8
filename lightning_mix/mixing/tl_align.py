"""TL-Align's label rule (Xiao et al. 2023, token-label alignment), torch only.

Authors' code: ``Euphoria16/TL-Align``, ``tla.py`` (``TL_AlignMix``: token-level CutMix, the
class token starts with the area-mixed label, each patch token with its own image's label) and
their ``timm/models/vision_transformer.py`` (``Attention.forward``: ``label_aligned =
mean_heads(attn.softmax).detach() @ label_embed``; ``Block.forward``: ``label_embed =
(label_aligned + label_embed) / 2``, the residual connection; the class token's final label is the
training target).

Every token label is a convex combination of the two mixed images' labels ``t_i`` and
``t_j``, and the rule is linear, so it is tracked here as one number per token, the weight of
``t_i`` (B, N), instead of a (B, N, C) label tensor: the class token's final label is
``w[:, 0] * t_i + (1 - w[:, 0]) * t_j`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["initial_token_weights", "patch_own_fraction", "propagate_token_weights"]


def patch_own_fraction(sources: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Fraction of each patch's pixels that are the sample's own, (B, gh * gw), from a mixed probe.

    ``sources`` (B, 1, H, W) holds the index of the image each pixel came from (see
    :func:`~lightning_mix.mixing.transmix.probe_sources`). With patch-aligned masks every entry is
    0 or 1 (the authors' token-level CutMix); otherwise a patch's label is weighted by its pixels.
    """
    b, _, h, w = sources.shape
    own = torch.arange(b, device=sources.device, dtype=sources.dtype).view(b, 1, 1, 1)
    is_own = (sources == own).float()[:, 0]
    gh, gw = grid
    return is_own.view(b, gh, h // gh, gw, w // gw).mean(dim=(2, 4)).reshape(b, gh * gw)


def initial_token_weights(own_fraction: torch.Tensor, lam: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Weights of the own label before the first block, (B, prefix + P): prefix tokens (the class
    token) get the area lam, patch tokens their own-pixel fraction.
    """
    prefix = lam.float().view(-1, 1).expand(-1, num_prefix_tokens)
    return torch.cat([prefix, own_fraction.float()], dim=1)


def propagate_token_weights(weights: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """One block of TL-Align: ``(mean_heads(attention) @ w + w) / 2``.

    Args:
        weights: (B, N) own-label weight of every token entering the block.
        attention: (B, H, N, N) the block's softmax attention (or (B, N, N) already averaged).
    """
    mean_attention = attention.float().mean(dim=1) if attention.dim() == 4 else attention.float()
    aligned = torch.bmm(mean_attention, weights.unsqueeze(-1)).squeeze(-1)
    return 0.5 * (aligned + weights)
