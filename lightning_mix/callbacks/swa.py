"""Stochastic Weight Averaging (Izmailov et al. 2018): an equal average of epoch-end weights.

Unlike Lightning's ``StochasticWeightAveraging``, this callback leaves the optimizer and the
learning-rate schedule alone unless asked (``annealing``), adds no extra epoch, feeds the BatchNorm
recalibration pass through the module's own batch transfer (any batch layout), pools the
statistics across DDP ranks, and resumes exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_mix.averaging.batchnorm import batchnorm_layers, recalibrate_batchnorm
from lightning_mix.averaging.ema import running_mean_update_
from lightning_mix.callbacks._trainer_state import check_not_sharded, is_last_training_batch
from lightning_mix.callbacks.ema import _AveragedWeights

__all__ = ["SWA"]


class SWA(Callback):
    r"""Average the weights at the end of each epoch from ``start_epoch`` on; use the average after fit.

    After the last training batch of every epoch ``e >= start_epoch`` (before the epoch-end
    validation and checkpoint) the weights (parameters and floating
    buffers) join an equal-weight running mean held in float32 (integer buffers copied). At the end
    of fit the average is loaded into the module and, with ``recalibrate_bn``, the BatchNorm
    running statistics are recomputed with one pass over the training data (the batches the fit
    used, ``limit_train_batches`` included) with
    :func:`~lightning_mix.averaging.recalibrate_batchnorm`: exact per-channel mean and variance,
    pooled across DDP ranks. Each batch goes through the module's own transfer
    (``on_before_batch_transfer``, ``transfer_batch_to_device``, ``on_after_batch_transfer``) and
    the precision plugin's forward context, then ``bn_forward(module, batch)`` feeds it; by default
    ``module(batch[input_key])`` (``input_key=None``: ``module(batch)``). Models without BatchNorm
    skip the pass. Validation during fit uses the raw weights (the average's BatchNorm statistics
    are only right after recalibration).

    Learning rate: untouched unless ``annealing`` (the SWA learning rate) is given. Then from
    ``start_epoch`` on, before every training batch, each param group's learning rate is set to a
    cosine ramp from its value when SWA started to ``annealing``, reached after
    ``annealing_epochs`` epochs (0: at once) and held. The user's scheduler keeps stepping, but its
    value is overwritten, as in the SWA paper's constant learning rate phase.

    Checkpoints: the average, its count and the annealing state live in the callback state, so
    ``fit(ckpt_path=...)`` continues the same average. A checkpoint saved after fit has the SWA
    model in ``state_dict`` and the trained weights in ``current_model_state`` (Lightning's
    ``WeightAveraging`` layout), so ``load_from_checkpoint`` gives the SWA model.

    DDP: ranks hold identical weights, so their averages agree; the BatchNorm pass runs on every
    rank's shard of the data and the statistics are pooled. Sharded strategies (FSDP, DeepSpeed,
    ModelParallel) are not supported and raise at setup.

    Args:
        start_epoch: first epoch (0-based) whose end-of-epoch weights are averaged; a float in
            [0, 1] is a fraction of ``max_epochs`` (``int(fraction * max_epochs)``).
        annealing: the SWA learning rate; ``None`` leaves the learning rate alone.
        annealing_epochs: epochs of the cosine ramp towards ``annealing``.
        recalibrate_bn: recompute BatchNorm statistics of the average at the end of fit.
        device: where the average lives (``"cpu"`` keeps it off the accelerator); default: with the model.
        input_key: which element of a batch is the model input in the recalibration pass
            (index of a list/tuple batch, key of a dict batch; ``None``: the whole batch).
        bn_forward: ``bn_forward(module, batch)`` replaces the default feed entirely (Python use;
            from YAML give an import path of a function).

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import SWA
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        trainer = Trainer(max_epochs=20, callbacks=[SWA(start_epoch=0.75)])
        trainer.fit(SmallCNN(), MNIST5kDataModule())  # the module now holds the SWA weights
        trainer.test(datamodule=MNIST5kDataModule())
    """

    def __init__(
        self,
        start_epoch: int | float = 0.75,
        annealing: float | None = None,
        annealing_epochs: int = 1,
        recalibrate_bn: bool = True,
        device: str | None = None,
        input_key: int | str | None = 0,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, (int, float)):
            raise TypeError(
                f"start_epoch must be an int (epoch) or a float fraction of max_epochs, got {start_epoch!r}."
            )
        if isinstance(start_epoch, float) and not 0.0 <= start_epoch <= 1.0:
            raise ValueError(
                f"A float start_epoch is a fraction of max_epochs and must lie in [0, 1], got {start_epoch}; "
                "pass an int for an epoch index."
            )
        if isinstance(start_epoch, int) and start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}.")
        if annealing is not None and annealing < 0:
            raise ValueError(f"annealing (the SWA learning rate) must be >= 0, got {annealing}.")
        if annealing_epochs < 0:
            raise ValueError(f"annealing_epochs must be >= 0, got {annealing_epochs}.")
        self.start_epoch = start_epoch
        self.annealing = annealing
        self.annealing_epochs = annealing_epochs
        self.recalibrate_bn = recalibrate_bn
        self.device = torch.device(device) if device is not None else None
        self.input_key = input_key
        self.bn_forward = bn_forward

        self._weights = _AveragedWeights()
        self._num_averaged = 0
        self._last_epoch = -1
        self._start_lrs: list[list[float]] | None = None
        self._loaded_average: dict[str, Any] | None = None
        self._first_epoch: int | None = None

    # ------------------------------------------------------------------ public read-only state
    @property
    def num_averaged(self) -> int:
        """How many epoch-end snapshots the average holds."""
        return self._num_averaged

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The running average as a state dict of the module (empty before the first snapshot)."""
        if self._weights.average is None:
            return {}
        return self._weights.state_dict_of(self._weights.average, {})

    def first_epoch(self, trainer: pl.Trainer) -> int:
        """The 0-based epoch from which snapshots are averaged, for this trainer."""
        if isinstance(self.start_epoch, float):
            max_epochs = trainer.max_epochs
            if max_epochs is None or max_epochs < 0:
                raise ValueError(
                    "SWA(start_epoch=<fraction>) needs Trainer(max_epochs=...); with max_steps or an open-ended run "
                    "give start_epoch as an int epoch index."
                )
            return int(self.start_epoch * max_epochs)
        return int(self.start_epoch)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_not_sharded(trainer, "SWA")
            self._first_epoch = self.first_epoch(trainer)
            # every fit starts a new average (a checkpoint restored next brings the old one back)
            self._weights.reset(pl_module)
            self._num_averaged = 0
            self._last_epoch = -1
            self._start_lrs = None
            self._loaded_average = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._weights.bind(pl_module)
        if self._loaded_average is not None:
            self._weights.load_average(self._loaded_average, self.device)
            self._loaded_average = None

    def _swa_lr(self, start_lr: float, epoch: int) -> float:
        assert self.annealing is not None and self._first_epoch is not None
        if self.annealing_epochs == 0:
            return self.annealing
        alpha = min(1.0, (epoch - self._first_epoch + 1) / self.annealing_epochs)
        return self.annealing + (start_lr - self.annealing) * 0.5 * (1.0 + math.cos(math.pi * alpha))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.annealing is None or self._first_epoch is None or trainer.current_epoch < self._first_epoch:
            return
        if self._start_lrs is None:
            self._start_lrs = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]
        for opt, lrs in zip(trainer.optimizers, self._start_lrs):
            for group, lr0 in zip(opt.param_groups, lrs):
                group["lr"] = self._swa_lr(lr0, trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The snapshot is taken after the epoch's last optimizer step, before the epoch-end validation,
        # so a checkpoint saved there (ModelCheckpoint's default) already contains it.
        if is_last_training_batch(trainer, batch_idx):
            self._snapshot(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer)  # epochs cut short (max_steps, a stop signal)

    def _snapshot(self, trainer: pl.Trainer) -> None:
        epoch = trainer.current_epoch
        if self._first_epoch is None or epoch < self._first_epoch or epoch <= self._last_epoch:
            return
        weights = self._weights
        if weights.average is None:
            weights.start(self.device)
        else:
            running_mean_update_(weights.average, weights.live, self._num_averaged)
        self._num_averaged += 1
        self._last_epoch = epoch

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._weights.average is None or self._num_averaged == 0:
            warnings.warn(
                f"SWA averaged no snapshot (start_epoch={self.start_epoch} resolved to epoch {self._first_epoch}, "
                f"training stopped after epoch {trainer.current_epoch}); the module keeps its trained weights.",
                stacklevel=2,
            )
            return
        if not self._weights.swapped:
            self._weights.swap_in()
        if self.recalibrate_bn and batchnorm_layers(pl_module):
            self._recalibrate(trainer, pl_module)

    # ------------------------------------------------------------------ BatchNorm pass
    def _feed(self, module: nn.Module, batch: Any) -> Any:
        if self.bn_forward is not None:
            return self.bn_forward(module, batch)
        if self.input_key is None:
            return module(batch)
        if isinstance(batch, Mapping) or isinstance(batch, (list, tuple)):
            try:
                inputs = batch[self.input_key]  # type: ignore[index]
            except (KeyError, IndexError, TypeError) as err:
                raise TypeError(
                    f"SWA cannot pick input_key={self.input_key!r} from a batch of type {type(batch).__name__}; "
                    "set SWA(input_key=...) to the index/key of the model input, input_key=None to pass the whole "
                    "batch, or bn_forward=callable(module, batch)."
                ) from err
            return module(inputs)
        return module(batch)

    def _batches(self, trainer: pl.Trainer) -> Iterator[Any]:
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError("SWA found no training dataloader for the BatchNorm pass; set recalibrate_bn=False.")
        if isinstance(loader, (Mapping, list, tuple)):
            raise TypeError(
                "SWA's BatchNorm pass supports a single training dataloader; with several, set recalibrate_bn=False "
                "and call lightning_mix.averaging.recalibrate_batchnorm yourself."
            )
        limit = trainer.num_training_batches
        batches = iter(loader)
        if isinstance(limit, int):
            batches = islice(batches, limit)
        pl_module = trainer.lightning_module
        for batch in batches:
            batch = trainer.precision_plugin.convert_input(batch)
            batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
            yield trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def _recalibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def forward(module: nn.Module, batch: Any) -> Any:
            with trainer.precision_plugin.forward_context():
                return self._feed(module, batch)

        recalibrate_batchnorm(pl_module, self._batches(trainer), forward=forward)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "num_averaged": self._num_averaged,
            "last_epoch": self._last_epoch,
            "start_lrs": self._start_lrs,
            "average": self.averaged_state_dict() or None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._num_averaged = int(state_dict["num_averaged"])
        self._last_epoch = int(state_dict["last_epoch"])
        self._start_lrs = state_dict.get("start_lrs")
        self._loaded_average = state_dict.get("average")

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        weights = self._weights
        if weights.swapped and weights.backup is not None:  # after fit: the module holds the SWA model
            checkpoint["current_model_state"] = weights.state_dict_of(weights.backup, checkpoint["state_dict"])

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if "current_model_state" in checkpoint:
            pl_module.load_state_dict(checkpoint["current_model_state"], strict=pl_module.strict_loading)
