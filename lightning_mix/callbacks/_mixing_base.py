"""What every batch-mixing callback shares: dense targets, the per-rank random stream, resume state,
``stop_epoch`` and the one-mixer-per-Trainer rule."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_mix.callbacks._batch_access import BatchKey, get_entry
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.callbacks._stream_state import SeededStreamState
from lightning_mix.mixing import dense_targets

__all__ = ["MixingCallbackBase", "infer_num_classes", "check_single_mixer"]


def check_single_mixer(trainer: pl.Trainer, pl_module: pl.LightningModule, owner: Callback) -> None:
    """Raise when the Trainer mixes twice: two mixing callbacks, or a mixing callback and a module that mixes its
    own batches.

    A module mixes its own batches when one of its classes sets ``mixes_own_batches`` to a phrase
    saying how (every mixin of :mod:`lightning_mix.mixins` that mixes in ``training_step`` does;
    a user's own module can too). Two mixers would be applied in turn (a mix of mixes, targets with
    up to four classes), which no method in this library intends; presets that add a mixer to a
    config that already has one end up here too.
    """
    others = [cb for cb in trainer.callbacks if isinstance(cb, MixingCallbackBase) and cb is not owner]
    if others:
        names = ", ".join(type(cb).__name__ for cb in [owner, *others])
        raise ValueError(
            f"the Trainer has {len(others) + 1} mixing callbacks ({names}); each would mix the batch "
            "again after the other. Keep one: to alternate mixers use one MixingCallback with "
            "RandomChoice([...]); with presets, compose a base config that has no mixing callback "
            "(examples/mnist5k.yaml) with one mixing preset."
        )
    how = getattr(pl_module, "mixes_own_batches", None)
    if how:
        mixins = [c for c in type(pl_module).__mro__ if getattr(c, "mixes_own_batches", None)]
        # the most derived mixin (SAMixMixin rather than AutoMixMixin), else the user's module that sets it
        mixin = next((c for c in mixins if not issubclass(c, pl.LightningModule)), mixins[0]).__name__
        article = "an" if mixin[0] in "AEIOU" else "a"
        raise ValueError(
            f"{type(owner).__name__} mixes the batch, but {type(pl_module).__name__} is {article} {mixin}, which "
            f"{how}; remove the callback."
        )


def infer_num_classes(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int | None:
    """``num_classes`` from the module's hyperparameters or attribute, else from the datamodule."""
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        if owner is None:
            continue
        hparams = getattr(owner, "hparams", {})
        value = hparams.get("num_classes") if hasattr(hparams, "get") else None
        value = value if value is not None else getattr(owner, "num_classes", None)
        if isinstance(value, int) and value >= 2:
            return value
    return None


class MixingCallbackBase(SeededStreamState, Callback):
    """Base of the callbacks that mix training batches in place (MixingCallback, RegMixup, ManifoldMixup).

    It owns the options they share and the bookkeeping behind them:

    * class-index targets become dense targets with label smoothing (``num_classes`` from the
      argument, else from the module's or datamodule's ``num_classes`` at the start of fit);
    * a :class:`~lightning_mix.callbacks._rng.CounterStream` seeded from ``seed`` (or
      ``torch.initial_seed()``), the global rank and a batch counter, so ranks draw different
      values and a resumed run continues the same sequence; seed and counter are the checkpoint
      state.

    * ``stop_epoch``: no mixing from that epoch on (early-stopped mixup); see :meth:`mixing_active`;
    * ``regression``: False (classification) refuses float targets of shape (B,), which are
      class labels stored as floats far more often than anything else; True mixes float targets
      of any shape as values (regression, C-Mixup);
    * at ``setup("fit")``, a second mixing callback or a RankMixupMixin / SMMixMixin module is an error.

    Subclasses implement ``on_train_batch_start`` with :meth:`read_batch` and
    :meth:`generator`, and call :meth:`advance` once per batch.
    """

    def __init__(
        self,
        num_classes: int | None,
        label_smoothing: float,
        input_key: BatchKey,
        target_key: BatchKey,
        seed: int | None,
        stop_epoch: int | None = None,
        regression: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if stop_epoch is not None and stop_epoch < 0:
            raise ValueError(f"stop_epoch must be a non-negative epoch number or None, got {stop_epoch}.")
        if regression and (num_classes is not None or label_smoothing > 0):
            raise ValueError(
                "regression=True mixes the targets as values; num_classes and label_smoothing apply to "
                "class labels only: leave them at None and 0."
            )
        self.stop_epoch = stop_epoch
        self.regression = bool(regression)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.input_key = input_key
        self.target_key = target_key
        self.seed = seed
        self._stream: CounterStream | None = None
        self._restored: dict[str, int] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_single_mixer(trainer, pl_module, self)

    def mixing_active(self, trainer: pl.Trainer) -> bool:
        """False from ``stop_epoch`` on (the batch then only gets its targets made dense)."""
        return self.stop_epoch is None or trainer.current_epoch < self.stop_epoch

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.num_classes is None and not self.regression:
            self.num_classes = infer_num_classes(trainer, pl_module)
        self._start_stream(trainer.global_rank)

    def read_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's inputs and its targets made dense (the batch is checked to be mutable)."""
        owner = type(self).__name__
        inputs = get_entry(batch, self.input_key, owner, "input")
        targets = get_entry(batch, self.target_key, owner, "target")
        return inputs, self.dense(targets)

    def dense(self, targets: torch.Tensor) -> torch.Tensor:
        """Class indices to dense targets; dense float targets (and regression values) pass through unchanged."""
        owner = type(self).__name__
        if self.regression:
            if not targets.is_floating_point():
                raise ValueError(
                    f"{owner}(regression=True) mixes targets as values but received {targets.dtype} targets; "
                    "convert them to float in the dataset, or use regression=False for class labels."
                )
            return targets
        if targets.is_floating_point():
            if targets.dim() == 1:
                raise ValueError(
                    f"{owner} received float targets of shape {tuple(targets.shape)}: one number per sample is "
                    "a class label stored as a float (convert the labels with .long() in the dataset) or a "
                    f"regression value (then pass regression=True to {owner}). Classification targets are "
                    "integer class indices (B,) or dense rows (B, num_classes)."
                )
            return targets
        if self.num_classes is None:
            raise ValueError(
                f"{type(self).__name__} received class-index targets but num_classes is not set and "
                "neither the module nor the datamodule has a num_classes; pass "
                "num_classes=<number of classes> so they can be turned into dense targets."
            )
        return dense_targets(targets, self.num_classes, self.label_smoothing)

    def generator(self, device: torch.device, salt: int = 0) -> torch.Generator:
        """This batch's generator on ``device``; ``salt`` separates independent uses in one batch."""
        if self._stream is None:
            raise RuntimeError(f"{type(self).__name__} is used outside fit: its random stream starts in on_fit_start.")
        return self._stream.generator(device, salt)

    def _draw_decision(self, p: float, salt: int) -> bool:
        """Whether this batch is mixed, with probability ``p``: always for ``p >= 1``, never for ``p <= 0``.

        Otherwise one uniform draw from this batch's CPU generator with ``salt`` decides.
        """
        if p >= 1.0:
            return True
        if p <= 0.0:
            return False
        draw = torch.rand((), generator=self.generator(torch.device("cpu"), salt=salt))
        return bool(draw < p)

    def advance(self) -> None:
        """Move the stream to the next batch."""
        self._stream.advance()
