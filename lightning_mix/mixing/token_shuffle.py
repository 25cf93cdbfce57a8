"""Stochastic layer-wise token shuffling (Huang et al. 2024), torch only.

Authors' code: ``huangzizheng01/ShuffleMamba``, ``models_shuffle.py``: layer ``l`` of ``depth`` is
shuffled with probability ``linspace(0, shuffle_rate, depth)[l]`` (0 for the first layer,
``shuffle_rate`` for the last; ``shuffle_rate=0.1`` by default), one Bernoulli draw per layer and
forward pass; when it fires, one random permutation of the token dimension (shared by the batch)
reorders the layer's inputs, and its inverse restores the order of the layer's outputs. Only
in training.
"""

from __future__ import annotations

import torch

__all__ = ["inverse_permutation", "layer_shuffle_probabilities", "permute_tokens"]


def layer_shuffle_probabilities(depth: int, shuffle_rate: float) -> list[float]:
    """``linspace(0, shuffle_rate, depth)``: the shuffle probability of each layer, rising with depth."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}.")
    return [float(v) for v in torch.linspace(0.0, shuffle_rate, depth, dtype=torch.float64)]


def inverse_permutation(permutation: torch.Tensor) -> torch.Tensor:
    """``inverse[permutation[i]] = i``."""
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return inverse


def permute_tokens(x: torch.Tensor, permutation: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``x`` with its ``dim`` reordered: ``out.select(dim, i) = x.select(dim, permutation[i])``."""
    return x.index_select(dim, permutation)
