"""Embedded data sets and small models for examples, tests and benchmarks (like ``lightning.pytorch.demos``)."""

from lightning_mix.demos.automix_cnn import AutoMixSmallCNN, SAMixSmallCNN
from lightning_mix.demos.data_modules import (
    DiabetesDataModule,
    MNIST5kDataModule,
    RandomShiftDataset,
    embedded_data_path,
)
from lightning_mix.demos.models import MLPRegressor, SmallCNN
from lightning_mix.demos.smmix_vit import SMMixTinyViT
from lightning_mix.demos.vit import TinyViT

__all__ = [
    "AutoMixSmallCNN",
    "DiabetesDataModule",
    "MLPRegressor",
    "MNIST5kDataModule",
    "RandomShiftDataset",
    "SAMixSmallCNN",
    "SMMixTinyViT",
    "SmallCNN",
    "TinyViT",
    "embedded_data_path",
]
