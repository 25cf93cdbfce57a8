"""Embedded data sets and small models for examples, tests and benchmarks (like ``lightning.pytorch.demos``).

The demo models built on a mixing mixin take the mixin's ``seed`` as ``mix_seed``: the data modules'
``seed`` picks their split, and Lightning refuses to log a model and a data module that give one
hyperparameter name two values.
"""

from lightning_mix.demos.adamixup_cnn import AdaMixUpSmallCNN
from lightning_mix.demos.adautomix_cnn import AdAutoMixSmallCNN
from lightning_mix.demos.automix_cnn import AutoMixSmallCNN, SAMixSmallCNN
from lightning_mix.demos.data_modules import (
    DiabetesDataModule,
    MNIST5kDataModule,
    RandomShiftDataset,
    cv_half_split,
    embedded_data_path,
)
from lightning_mix.demos.models import MLPRegressor, SmallCNN
from lightning_mix.demos.rank_mixup_cnn import RankMixupSmallCNN
from lightning_mix.demos.smmix_vit import SMMixTinyViT
from lightning_mix.demos.sumix_cnn import SUMixSmallCNN
from lightning_mix.demos.vit import TinyViT

__all__ = [
    "AdAutoMixSmallCNN",
    "AdaMixUpSmallCNN",
    "AutoMixSmallCNN",
    "DiabetesDataModule",
    "MLPRegressor",
    "MNIST5kDataModule",
    "RandomShiftDataset",
    "RankMixupSmallCNN",
    "SAMixSmallCNN",
    "SMMixTinyViT",
    "SUMixSmallCNN",
    "SmallCNN",
    "TinyViT",
    "cv_half_split",
    "embedded_data_path",
]
