"""Questions about the Trainer's state that several averaging callbacks ask."""

from __future__ import annotations

import lightning.pytorch as pl

__all__ = ["check_not_sharded", "is_last_training_batch"]

_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def check_not_sharded(trainer: pl.Trainer, who: str) -> None:
    """Raise a clear error under strategies that shard parameters across ranks."""
    names = {cls.__name__ for cls in type(trainer.strategy).__mro__}
    sharded = names.intersection(_SHARDED_STRATEGIES)
    if sharded:
        raise RuntimeError(
            f"{who} does not support the {sorted(sharded)[0]} strategy: there every rank holds only a shard of "
            "each parameter, so the averaged copy, the swap and the checkpoint layout would all be per shard. "
            "Use strategy='ddp' (or a single device), or average the consolidated weights after training."
        )


def is_last_training_batch(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether ``batch_idx`` is the epoch's last training batch (``limit_train_batches`` included).

    Callbacks that snapshot weights at epoch end do it here, after the last optimizer step and
    before the epoch-end validation, so a checkpoint saved then already holds the snapshot.
    """
    limit = trainer.num_training_batches
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or (
        isinstance(limit, int) and batch_idx + 1 >= limit
    )
