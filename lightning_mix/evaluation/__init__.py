"""Evaluation you can trust: bootstrap intervals, paired tests, selective prediction and diversity.

All of it works over stored predictions, with torch and numpy (torchmetrics for the Metric
classes) and no Lightning import.
"""

from lightning_mix.evaluation.bootstrap import BootstrapResult, bootstrap_ci, paired_bootstrap
from lightning_mix.evaluation.diversity import EnsembleGain, ensemble_gain, pairwise_disagreement
from lightning_mix.evaluation.hierarchical_bootstrap import hierarchical_bootstrap_ci, paired_hierarchical_bootstrap
from lightning_mix.evaluation.hypothesis_tests import (
    cochrans_q,
    combined_ftest_5x2cv,
    combined_ftest_5x2cv_from_scores,
    five_by_two_cv_scores,
    holm_correction,
    mcnemar,
    mcnemar_table,
    paired_ttest_5x2cv,
    paired_ttest_5x2cv_from_scores,
)
from lightning_mix.evaluation.metric_classes import AURC, EnsembleDiversity, ExcessAURC, SelectiveAccuracy
from lightning_mix.evaluation.point632 import Point632Result, bootstrap_point632_error, zero_one_loss
from lightning_mix.evaluation.selective import aurc, excess_aurc, risk_coverage_curve, selective_accuracy

__all__ = [
    "AURC",
    "BootstrapResult",
    "EnsembleDiversity",
    "EnsembleGain",
    "ExcessAURC",
    "Point632Result",
    "SelectiveAccuracy",
    "aurc",
    "bootstrap_ci",
    "bootstrap_point632_error",
    "cochrans_q",
    "combined_ftest_5x2cv",
    "combined_ftest_5x2cv_from_scores",
    "ensemble_gain",
    "excess_aurc",
    "five_by_two_cv_scores",
    "hierarchical_bootstrap_ci",
    "holm_correction",
    "mcnemar",
    "mcnemar_table",
    "paired_bootstrap",
    "paired_hierarchical_bootstrap",
    "paired_ttest_5x2cv",
    "paired_ttest_5x2cv_from_scores",
    "pairwise_disagreement",
    "risk_coverage_curve",
    "selective_accuracy",
    "zero_one_loss",
]
