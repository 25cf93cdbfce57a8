"""Lightning callbacks: thin adapters that decide *when* the torch-only layers act."""

from lightning_mix.callbacks.alignmixup import AlignMixup
from lightning_mix.callbacks.calibration_monitor import CalibrationMonitor
from lightning_mix.callbacks.cmixup import CMixup
from lightning_mix.callbacks.comixup import CoMixup
from lightning_mix.callbacks.ema import EMA
from lightning_mix.callbacks.manifold_mixup import ManifoldMixup
from lightning_mix.callbacks.mixing import MixingCallback
from lightning_mix.callbacks.model_soup import ModelSoup
from lightning_mix.callbacks.puzzlemix import PuzzleMix
from lightning_mix.callbacks.regmixup import RegMixup
from lightning_mix.callbacks.swa import SWA
from lightning_mix.callbacks.temperature_scaling import TemperatureScaling
from lightning_mix.callbacks.tl_align import TLAlign
from lightning_mix.callbacks.token_shuffle import TokenShuffle
from lightning_mix.callbacks.transmix import TransMix

__all__ = [
    "AlignMixup",
    "CalibrationMonitor",
    "CMixup",
    "CoMixup",
    "EMA",
    "ManifoldMixup",
    "MixingCallback",
    "ModelSoup",
    "PuzzleMix",
    "RegMixup",
    "SWA",
    "TemperatureScaling",
    "TLAlign",
    "TokenShuffle",
    "TransMix",
]
