"""Lightning callbacks: thin adapters that decide *when* the torch-only layers act."""

from lightning_mix.callbacks.alignmixup import AlignMixup
from lightning_mix.callbacks.calibration_monitor import CalibrationMonitor
from lightning_mix.callbacks.ema import EMA
from lightning_mix.callbacks.manifold_mixup import ManifoldMixup
from lightning_mix.callbacks.mixing import MixingCallback
from lightning_mix.callbacks.model_soup import ModelSoup
from lightning_mix.callbacks.puzzlemix import PuzzleMix
from lightning_mix.callbacks.regmixup import RegMixup
from lightning_mix.callbacks.swa import SWA
from lightning_mix.callbacks.temperature_scaling import TemperatureScaling

__all__ = [
    "EMA",
    "SWA",
    "AlignMixup",
    "CalibrationMonitor",
    "ManifoldMixup",
    "MixingCallback",
    "ModelSoup",
    "PuzzleMix",
    "RegMixup",
    "TemperatureScaling",
]
