"""Shared by the AutoMix tests and DDP script: the demo CNN with AutoMix, and a small fixed data set."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import SmallCNN
from lightning_mix.mixins import AutoMixMixin, SAMixMixin


class AutoMixCNN(AutoMixMixin, SmallCNN):
    """SmallCNN whose Mix Block reads ``feature_layer`` (``block2``: 2 * width channels, 7x7 on 28x28 inputs)."""

    def __init__(self, width: int = 4, seed: int = 0, feature_layer: str = "block2", lam_margin: float = 0.08):
        super().__init__(width=width, cosine_schedule=False)
        self.configure_automix(
            feature_layer=feature_layer, feature_channels=2 * width, seed=seed, lam_margin=lam_margin
        )


def make_data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def make_loader(batch_size: int = 8, n: int = 32) -> DataLoader:
    return DataLoader(make_data(n), batch_size=batch_size, shuffle=False)


class SAMixCNN(SAMixMixin, SmallCNN):
    """SmallCNN with SAMix's Mix Block on ``feature_layer``."""

    def __init__(
        self,
        width: int = 4,
        seed: int = 0,
        feature_layer: str = "block2",
        lam_margin: float = 0.08,
        mask_adjust: float = 0.25,
    ):
        super().__init__(width=width, cosine_schedule=False)
        self.configure_samix(
            feature_layer=feature_layer,
            feature_channels=2 * width,
            seed=seed,
            lam_margin=lam_margin,
            mask_adjust=mask_adjust,
        )


MODELS = {"automix": AutoMixCNN, "samix": SAMixCNN}
