"""Lightning callbacks: thin adapters that decide *when* the torch-only layers act."""

from lightning_mix.callbacks.calibration_monitor import CalibrationMonitor
from lightning_mix.callbacks.cmixup import CMixup
from lightning_mix.callbacks.ema import EMA
from lightning_mix.callbacks.manifold_mixup import ManifoldMixup
from lightning_mix.callbacks.mixing import MixingCallback
from lightning_mix.callbacks.model_soup import ModelSoup
from lightning_mix.callbacks.regmixup import RegMixup
from lightning_mix.callbacks.swa import SWA
from lightning_mix.callbacks.temperature_scaling import TemperatureScaling

__all__ = [
    "CalibrationMonitor",
    "CMixup",
    "EMA",
    "ManifoldMixup",
    "MixingCallback",
    "ModelSoup",
    "RegMixup",
    "SWA",
    "TemperatureScaling",
]
