"""Model merging over state dicts, streaming one tensor at a time (torch only).

Inputs are state dicts, modules or checkpoint paths (memory-mapped, read lazily); the output is a
state dict. Every per-tensor method is registered in :data:`REGISTRY` under the name of its
function (the ``lightning-mix merge --method`` value) and runs through :func:`merge`; arithmetic is
float32, the output dtype is the reference model's unless :class:`MergeOptions` says otherwise,
integer buffers are copied from the base (or first) model. :func:`adamerging` learns its
coefficients with gradients and is not a per-tensor method.
"""

from lightning_mix.merging.adamerging import adamerging, prediction_entropy
from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods.consensus import ConsensusParams, consensus, consensus_mask, tall_masks
from lightning_mix.merging.methods.dare import DareParams, dare, dare_drop
from lightning_mix.merging.methods.fisher import FisherParams, fisher, fisher_information
from lightning_mix.merging.methods.model_stock import ModelStockParams, model_stock, model_stock_ratio
from lightning_mix.merging.methods.pcb import PcbParams, pcb, pcb_clamp, pcb_scores, pcb_weights
from lightning_mix.merging.methods.regmean import RegmeanParams, regmean, regmean_grams
from lightning_mix.merging.methods.slerp import SlerpParams, slerp, slerp_tensor
from lightning_mix.merging.methods.task_arithmetic import TaskArithmeticParams, task_arithmetic
from lightning_mix.merging.methods.ties import TiesParams, elect_and_disjoint_mean, ties, ties_kept_count, trim_top_k
from lightning_mix.merging.methods.weighted_average import WeightedAverageParams, weighted_average
from lightning_mix.merging.registry import REGISTRY, MergeError, MergeMethod, TensorInputs, get_method, register
from lightning_mix.merging.sources import StateDictSource

__all__ = [
    "REGISTRY",
    "ConsensusParams",
    "DareParams",
    "FisherParams",
    "MergeError",
    "MergeMethod",
    "MergeOptions",
    "ModelStockParams",
    "PcbParams",
    "RegmeanParams",
    "SlerpParams",
    "StateDictSource",
    "TaskArithmeticParams",
    "TensorInputs",
    "TiesParams",
    "WeightedAverageParams",
    "adamerging",
    "consensus",
    "consensus_mask",
    "dare",
    "dare_drop",
    "elect_and_disjoint_mean",
    "fisher",
    "fisher_information",
    "get_method",
    "merge",
    "model_stock",
    "model_stock_ratio",
    "pcb",
    "pcb_clamp",
    "pcb_scores",
    "pcb_weights",
    "prediction_entropy",
    "register",
    "regmean",
    "regmean_grams",
    "slerp",
    "slerp_tensor",
    "tall_masks",
    "task_arithmetic",
    "ties",
    "ties_kept_count",
    "trim_top_k",
    "weighted_average",
]
