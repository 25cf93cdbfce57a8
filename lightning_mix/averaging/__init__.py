"""Weight averaging, soups and merging (torch only): state dicts in, state dict out.

EMA and running-mean updates over whole tensor lists, BatchNorm recalibration, uniform and greedy
soups streaming ingredients from disk, model merging (task arithmetic, TIES, DARE, SLERP, Model
Stock, PCB, consensus, Fisher, RegMean, AdaMerging) and permutation alignment.
"""

from lightning_mix.averaging.batchnorm import recalibrate_batchnorm
from lightning_mix.averaging.soups import (
    GreedySoup,
    greedy_soup,
    load_ingredient,
    save_ingredient,
    uniform_soup,
)
from lightning_mix.averaging.ema import (
    averaging_copy,
    averaging_tensors,
    copy_tensors_,
    ema_update_,
    running_mean_update_,
)
from lightning_mix.averaging.schedules import ema_decay_at, ema_warmup_decay
from lightning_mix.averaging.merging import (
    MergeError,
    adamerging,
    consensus_merge,
    dare,
    fisher_information,
    fisher_merge,
    model_stock,
    pcb_merge,
    regmean_grams,
    regmean_merge,
    slerp,
    task_arithmetic,
    ties_merge,
    weighted_average,
)
from lightning_mix.averaging.permutation import PermutationSpec, infer_permutation_spec, weight_matching

__all__ = [
    "GreedySoup",
    "MergeError",
    "PermutationSpec",
    "adamerging",
    "averaging_copy",
    "averaging_tensors",
    "consensus_merge",
    "copy_tensors_",
    "dare",
    "ema_decay_at",
    "ema_update_",
    "ema_warmup_decay",
    "fisher_information",
    "fisher_merge",
    "greedy_soup",
    "infer_permutation_spec",
    "load_ingredient",
    "model_stock",
    "pcb_merge",
    "recalibrate_batchnorm",
    "regmean_grams",
    "regmean_merge",
    "running_mean_update_",
    "save_ingredient",
    "slerp",
    "task_arithmetic",
    "ties_merge",
    "uniform_soup",
    "weight_matching",
    "weighted_average",
]
