"""TL-Align's label rule on hand-built maps, and against the authors' full label tensors."""

from __future__ import annotations

import torch
from references.vit_label_rules import tl_align_class_label

from lightning_mix.mixing import dense_targets
from lightning_mix.mixing.tl_align import initial_token_weights, patch_own_fraction, propagate_token_weights
from lightning_mix.mixing.transmix import probe_sources


def test_one_block_by_hand():
    # class token + 2 patches, patch 2 pasted, area lam 0.5: weights [0.5, 1, 0].
    # attention rows: [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]
    # A w = [0.1 + 0.3, 0.05 + 0.8, 0.2 + 0.4] = [0.4, 0.85, 0.6]; (A w + w) / 2 = [0.45, 0.925, 0.3]
    weights = initial_token_weights(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]))
    torch.testing.assert_close(weights, torch.tensor([[0.5, 1.0, 0.0]]))
    attention = torch.tensor([[[[0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]]]])
    torch.testing.assert_close(propagate_token_weights(weights, attention), torch.tensor([[0.45, 0.925, 0.3]]))
    # two heads averaged: the second head attends to itself only -> mean map = (A + I) / 2
    two_heads = torch.cat([attention, torch.eye(3).view(1, 1, 3, 3)], dim=1)
    mean_map_w = (torch.tensor([0.4, 0.85, 0.6]) + torch.tensor([0.5, 1.0, 0.0])) / 2
    want = (mean_map_w + torch.tensor([0.5, 1.0, 0.0])) / 2
    torch.testing.assert_close(propagate_token_weights(weights, two_heads), want.view(1, 3))


def test_identity_attention_keeps_the_labels_and_uniform_attention_averages_them():
    weights = torch.tensor([[0.7, 1.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(propagate_token_weights(weights, torch.eye(5).view(1, 1, 5, 5)), weights)
    uniform = torch.full((1, 1, 5, 5), 0.2)
    torch.testing.assert_close(propagate_token_weights(weights, uniform), (weights + weights.mean()) / 2)


def test_scalar_weights_equal_the_authors_full_label_tensors():
    g = torch.Generator().manual_seed(0)
    b, p, heads, blocks, classes = 4, 9, 3, 4, 6
    labels = torch.randint(0, classes, (b,), generator=g)
    own, partner = dense_targets(labels, classes, 0.1), dense_targets(labels.flip(0), classes, 0.1)
    pasted = (torch.rand(b, p, generator=g) < 0.4).float()
    lam = 1 - pasted.mean(1)
    attentions = [torch.rand(b, heads, p + 1, p + 1, generator=g).softmax(-1) for _ in range(blocks)]
    weights = initial_token_weights(1 - pasted, lam)
    for attention in attentions:
        weights = propagate_token_weights(weights, attention)
    got = own * weights[:, :1] + partner * (1 - weights[:, :1])
    torch.testing.assert_close(got, tl_align_class_label(own, partner, lam, pasted, attentions))


def test_patch_own_fraction_counts_pixels_per_patch():
    sources = probe_sources(2, (8, 8), "cpu")
    sources[0, 0, 0:4, 0:4] = 1.0  # patch 0 wholly pasted
    sources[0, 0, 4:6, 4:8] = 1.0  # half of patch 3 pasted
    got = patch_own_fraction(sources, [2, 2])
    torch.testing.assert_close(got, torch.tensor([[0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0]]))
