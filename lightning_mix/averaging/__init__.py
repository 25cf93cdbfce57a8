"""Weight averaging and soups (torch only): state dicts in, state dict out.

EMA and running-mean updates over whole tensor lists, BatchNorm recalibration, uniform and greedy
soups streaming ingredients from disk, and permutation alignment. Model merging (task arithmetic,
TIES, DARE, ...) is :mod:`lightning_mix.merging`.
"""

from lightning_mix.averaging.batchnorm import recalibrate_batchnorm
from lightning_mix.averaging.ema import (
    averaging_copy,
    averaging_tensors,
    copy_tensors_,
    ema_update_,
    running_mean_update_,
)
from lightning_mix.averaging.permutation import PermutationSpec, infer_permutation_spec, weight_matching
from lightning_mix.averaging.schedules import ema_decay_at, ema_warmup_decay
from lightning_mix.averaging.soups import (
    GreedySoup,
    greedy_soup,
    load_ingredient,
    save_ingredient,
    uniform_soup,
)

__all__ = [
    "GreedySoup",
    "PermutationSpec",
    "averaging_copy",
    "averaging_tensors",
    "copy_tensors_",
    "ema_decay_at",
    "ema_update_",
    "ema_warmup_decay",
    "greedy_soup",
    "infer_permutation_spec",
    "load_ingredient",
    "recalibrate_batchnorm",
    "running_mean_update_",
    "save_ingredient",
    "uniform_soup",
    "weight_matching",
]
