"""LightningModule mixins for methods that must change the training step (extra forward passes, ...)."""

from lightning_mix.mixins.adamixup import AdaMixUpMixin
from lightning_mix.mixins.adautomix import AdAutoMixMixin
from lightning_mix.mixins.automix import AutoMixMixin, SAMixMixin
from lightning_mix.mixins.rank_mixup import RankMixupMixin
from lightning_mix.mixins.smmix import SMMixMixin
from lightning_mix.mixins.sumix import SUMixMixin

__all__ = [
    "AdAutoMixMixin",
    "AdaMixUpMixin",
    "AutoMixMixin",
    "RankMixupMixin",
    "SAMixMixin",
    "SMMixMixin",
    "SUMixMixin",
]
