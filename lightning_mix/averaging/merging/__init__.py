"""Model merging over state dicts, streaming one tensor at a time (torch only).

Inputs are state dicts, modules or checkpoint paths (memory-mapped, read lazily); the output is a
state dict. Arithmetic runs per tensor in float32; the output dtype is the base model's unless
``dtype=`` says otherwise; integer buffers are copied from the base (or first) model; ``include`` /
``exclude`` glob patterns choose what is merged and ``overrides`` changes a method's parameters per
name.
"""

from lightning_mix.averaging.merging.adamerging import adamerging, prediction_entropy
from lightning_mix.averaging.merging.arithmetic import (
    dare,
    dare_drop,
    elect_and_disjoint_mean,
    task_arithmetic,
    ties_merge,
    trim_top_k,
    weighted_average,
)
from lightning_mix.averaging.merging.consensus import consensus_mask, consensus_merge, tall_masks
from lightning_mix.averaging.merging.core import MergeError, check_compatible, merge_state_dicts
from lightning_mix.averaging.merging.fisher import fisher_information, fisher_merge
from lightning_mix.averaging.merging.geometry import model_stock, model_stock_ratio, slerp, slerp_tensor
from lightning_mix.averaging.merging.io import StateDictSource, extract_state_dict, limit_heap_growth, load_checkpoint_lazy
from lightning_mix.averaging.merging.pcb import pcb_merge, pcb_scores, pcb_weights
from lightning_mix.averaging.merging.regmean import regmean_grams, regmean_merge

__all__ = [
    "MergeError",
    "adamerging",
    "prediction_entropy",
    "StateDictSource",
    "check_compatible",
    "consensus_mask",
    "consensus_merge",
    "dare",
    "dare_drop",
    "elect_and_disjoint_mean",
    "extract_state_dict",
    "fisher_information",
    "fisher_merge",
    "limit_heap_growth",
    "load_checkpoint_lazy",
    "merge_state_dicts",
    "model_stock",
    "model_stock_ratio",
    "pcb_merge",
    "pcb_scores",
    "pcb_weights",
    "regmean_grams",
    "regmean_merge",
    "slerp",
    "slerp_tensor",
    "tall_masks",
    "task_arithmetic",
    "ties_merge",
    "trim_top_k",
    "weighted_average",
]
