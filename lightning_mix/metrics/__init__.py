"""Calibration metrics (torch + torchmetrics only; never Lightning).

Every metric exists twice, torchmetrics style: a pure function in
:mod:`lightning_mix.metrics.functional` and a ``Metric`` class that only keeps additive state
(per-bin sums, so DDP synchronises a few hundred bytes) and calls the same reductions.
"""

from lightning_mix.metrics.calibration import (
    BrierScore,
    CalibrationError,
    NegativeLogLikelihood,
    OverconfidenceError,
    ReliabilityDiagram,
    SmoothECE,
    UnderconfidenceError,
)
from lightning_mix.metrics.functional import (
    brier_score,
    calibration_error,
    negative_log_likelihood,
    overconfidence_error,
    reliability_diagram,
    smooth_ece,
    underconfidence_error,
)
from lightning_mix.metrics.plot import plot_reliability_diagram
from lightning_mix.metrics.temperature import fit_temperature, temperature_nll

__all__ = [
    "BrierScore",
    "CalibrationError",
    "NegativeLogLikelihood",
    "OverconfidenceError",
    "ReliabilityDiagram",
    "SmoothECE",
    "UnderconfidenceError",
    "brier_score",
    "calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "overconfidence_error",
    "plot_reliability_diagram",
    "reliability_diagram",
    "smooth_ece",
    "temperature_nll",
    "underconfidence_error",
]
