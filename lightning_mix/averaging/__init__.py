"""lightning_mix.averaging"""

from lightning_mix.averaging.batchnorm import recalibrate_batchnorm  # noqa: E402
from lightning_mix.averaging.soups import (  # noqa: E402
    GreedySoup,
    greedy_soup,
    load_ingredient,
    save_ingredient,
    uniform_soup,
)
from lightning_mix.averaging.ema import (  # noqa: E402
    averaging_copy,
    averaging_tensors,
    copy_tensors_,
    ema_update_,
    running_mean_update_,
)
from lightning_mix.averaging.schedules import ema_decay_at, ema_warmup_decay  # noqa: E402
from lightning_mix.averaging.merging import (  # noqa: E402
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
from lightning_mix.averaging.permutation import PermutationSpec, infer_permutation_spec, weight_matching  # noqa: E402
