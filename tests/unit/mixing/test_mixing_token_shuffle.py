"""Stochastic layer-wise shuffle: probabilities by hand, permutations and their inverse."""

from __future__ import annotations

import pytest
import torch

from lightning_mix.mixing.token_shuffle import inverse_permutation, layer_shuffle_probabilities, permute_tokens


def test_probabilities_rise_linearly_from_zero_to_the_rate():
    assert layer_shuffle_probabilities(3, 0.1) == pytest.approx([0.0, 0.05, 0.1])
    assert layer_shuffle_probabilities(5, 1.0) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert layer_shuffle_probabilities(1, 0.3) == pytest.approx([0.0])
    with pytest.raises(ValueError, match="depth"):
        layer_shuffle_probabilities(0, 0.1)


def test_permutation_by_hand_and_its_inverse():
    x = torch.tensor([[[10.0], [20.0], [30.0]]])
    perm = torch.tensor([2, 0, 1])
    shuffled = permute_tokens(x, perm)
    assert shuffled.flatten().tolist() == [30.0, 10.0, 20.0]
    assert inverse_permutation(perm).tolist() == [1, 2, 0]
    torch.testing.assert_close(permute_tokens(shuffled, inverse_permutation(perm)), x)
