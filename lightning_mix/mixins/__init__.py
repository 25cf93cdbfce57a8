"""LightningModule mixins for methods that must change the training step (extra forward passes, ...)."""

from lightning_mix.mixins.automix import AutoMixMixin
from lightning_mix.mixins.rank_mixup import RankMixupMixin

__all__ = ["AutoMixMixin", "RankMixupMixin"]
