"""Stochastic Weight Averaging (Izmailov et al. 2018): an equal average of epoch-end weights.

Unlike Lightning's ``StochasticWeightAveraging``, this callback leaves the optimizer and the
learning-rate schedule alone unless asked (``annealing``), adds no extra epoch, feeds the BatchNorm
recalibration pass through the module's own batch transfer (any batch layout), pools the
statistics across DDP ranks, and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_mix.averaging.batchnorm import batchnorm_layers, recalibrate_batchnorm
from lightning_mix.averaging.ema import running_mean_update_
from lightning_mix.callbacks._batch_feed import _feed_module, _resolve_input_key, _transferred_batches
from lightning_mix.callbacks._weight_averaging import _WeightAveraging

__all__ = ["SWA"]


class SWA(_WeightAveraging):
    r"""Average the weights at the end of each epoch from ``start_epoch`` on; end the fit with the average.

    After the last training batch of every epoch ``e >= start_epoch`` (before the epoch-end
    validation and checkpoint) the weights (parameters and floating buffers) join an equal-weight
    running mean held in float32 (integer buffers copied). At the end of fit, with
    ``recalibrate_bn`` and BatchNorm layers in the model, the average's BatchNorm running statistics
    are recomputed with one pass over the training data (the batches the fit used,
    ``limit_train_batches`` included) with :func:`~lightning_mix.averaging.recalibrate_batchnorm`:
    exact per-channel mean and variance, pooled across DDP ranks. Each batch goes through the
    module's own transfer hooks and the precision plugin (:mod:`~lightning_mix.callbacks._batch_feed`),
    then ``module(input)`` feeds it, ``input`` picked by ``input_key`` (default: found from the
    batch and ``forward``'s signature), or ``bn_forward(module, batch)`` does. Validation during fit
    uses the trained weights (the average's BatchNorm statistics are only right after the pass).

    End of fit: the owner of the final weights (``owns_final_weights``, see
    :mod:`~lightning_mix.callbacks._ownership`) loads the recalibrated average into the module in
    ``on_train_end``. With ``owns_final_weights=False`` the module keeps its weights and the
    (recalibrated) average is available through :meth:`averaged_state_dict`.

    Learning rate: untouched unless ``annealing`` (the SWA learning rate) is given. Then from
    ``start_epoch`` on, before every training batch, each param group's learning rate is set to a
    cosine ramp from its value when SWA started to ``annealing``, reached after
    ``annealing_epochs`` epochs (0: at once) and held. The user's scheduler keeps stepping, but its
    value is overwritten, as in the SWA paper's constant learning rate phase.

    Checkpoints: during fit ``state_dict`` holds the trained weights (what validation uses) and the
    average, its count and the annealing state live in the callback state, so
    ``fit(ckpt_path=...)`` continues the same average exactly (also under DDP: every rank's own
    BatchNorm averages are saved). A checkpoint saved after fit by the owner has the SWA model in
    ``state_dict`` and the trained weights in ``current_model_state`` (Lightning's
    ``WeightAveraging`` layout), so ``load_from_checkpoint`` and ``test(ckpt_path=...)`` use it.

    Misconfiguration is caught before the first optimizer step: ``start_epoch`` as a fraction without
    ``max_epochs`` at setup; several training dataloaders at ``on_train_start``; a batch whose model
    input cannot be found at the first training batch.

    Args:
        start_epoch: first epoch (0-based) whose end-of-epoch weights are averaged; a float in
            [0, 1] is a fraction of ``max_epochs`` (``int(fraction * max_epochs)``).
        annealing: the SWA learning rate; ``None`` leaves the learning rate alone.
        annealing_epochs: epochs of the cosine ramp towards ``annealing``.
        recalibrate_bn: recompute BatchNorm statistics of the average at the end of fit.
        device: where the average lives (``"cpu"`` keeps it off the accelerator); default: with the model.
        input_key: which element of a batch is the model input in the BatchNorm pass (index of a
            list/tuple batch, key of a dict batch). ``None`` (default): a tensor batch itself,
            element 0 of a list/tuple, the one tensor entry of a dict whose key names a parameter of
            ``forward``.
        bn_forward: ``bn_forward(module, batch)`` replaces the default feed entirely (Python use;
            from YAML give an import path of a function).
        owns_final_weights: ``True``: put the average in the module at the end of fit; ``False``:
            never; ``None``: yes unless another weight owner (``EMA``, ``ModelSoup``) is in the
            Trainer, in which case setup raises and asks.

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
        input_key: int | str | None = None,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
        owns_final_weights: bool | None = None,
    ) -> None:
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
        super().__init__(device=device, owns_final_weights=owns_final_weights)
        self.start_epoch = start_epoch
        self.annealing = annealing
        self.annealing_epochs = annealing_epochs
        self.recalibrate_bn = recalibrate_bn
        self.input_key = input_key
        self.bn_forward = bn_forward

        self._start_lrs: list[list[float]] | None = None
        self._first_epoch: int | None = None
        self._resolved_key: int | str | None = None
        self._needs_feed = False  # the BatchNorm pass will use the default feed: check it on the first batch

    # ------------------------------------------------------------------ public read-only state
    @property
    def num_averaged(self) -> int:
        """How many epoch-end snapshots the average holds."""
        return self._num_updates

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

    # ------------------------------------------------------------------ schedule and rule
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return epoch_idx is not None and self._first_epoch is not None and epoch_idx >= self._first_epoch

    def _average_into(self, average: list[Tensor], live: list[Tensor], step_idx: int | None) -> None:
        running_mean_update_(average, live, self._num_updates)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._first_epoch = self.first_epoch(trainer)
            self._start_lrs = None
            self._resolved_key = self.input_key

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._needs_feed = False
        if not self.recalibrate_bn or not batchnorm_layers(pl_module):
            return
        loader = trainer.train_dataloader
        if isinstance(loader, (Mapping, list, tuple)):
            raise TypeError(
                "SWA's BatchNorm pass supports a single training dataloader; with several, set recalibrate_bn=False "
                "and call lightning_mix.averaging.recalibrate_batchnorm yourself."
            )
        self._needs_feed = self.bn_forward is None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._needs_feed:  # the first batch, before any optimizer step: can the pass find the input?
            self._resolved_key = _resolve_input_key(batch, pl_module.forward, self.input_key, "SWA")
            self._needs_feed = False
        if self.annealing is None or self._first_epoch is None or trainer.current_epoch < self._first_epoch:
            return
        if self._start_lrs is None:
            self._start_lrs = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]
        for opt, lrs in zip(trainer.optimizers, self._start_lrs):
            for group, lr0 in zip(opt.param_groups, lrs):
                group["lr"] = self._swa_lr(lr0, trainer.current_epoch)

    def _swa_lr(self, start_lr: float, epoch: int) -> float:
        assert self.annealing is not None and self._first_epoch is not None
        if self.annealing_epochs == 0:
            return self.annealing
        alpha = min(1.0, (epoch - self._first_epoch + 1) / self.annealing_epochs)
        return self.annealing + (start_lr - self.annealing) * 0.5 * (1.0 + math.cos(math.pi * alpha))

    def _never_updated_message(self, trainer: pl.Trainer) -> str:
        return (
            f"SWA averaged no snapshot (start_epoch={self.start_epoch} resolved to epoch {self._first_epoch}, "
            f"training stopped after epoch {trainer.current_epoch}); the module keeps its trained weights."
        )

    # ------------------------------------------------------------------ BatchNorm pass
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.recalibrate_bn or not batchnorm_layers(pl_module):
            return
        weights, final = self._weights, self._final
        assert final is not None
        side = not weights.in_module  # not the owner: recalibrate in the module, then put its weights back
        if side:
            weights.swap_in(final)
        try:
            self._recalibrate(trainer, pl_module)
            # the final weights take the recalibrated statistics (the running average keeps its own for resume)
            with torch.no_grad():
                for i, (_, live) in enumerate(weights.entries):
                    if not isinstance(live, nn.Parameter):
                        final[i].copy_(live)
        finally:
            if side:
                weights.swap_out()

    def _recalibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError("SWA found no training dataloader for the BatchNorm pass; set recalibrate_bn=False.")
        batches = _transferred_batches(trainer, pl_module, loader, trainer.num_training_batches)
        bn_forward = self.bn_forward
        if bn_forward is not None:

            def forward(module: nn.Module, batch: Any) -> Any:
                with trainer.precision_plugin.forward_context():
                    return bn_forward(module, batch)

        else:
            key = self._resolved_key

            def forward(module: nn.Module, batch: Any) -> Any:
                return _feed_module(trainer, module, batch, key)

        recalibrate_batchnorm(pl_module, batches, forward=forward)

    # ------------------------------------------------------------------ checkpoints
    def _counters(self) -> dict[str, Any]:
        return {**super()._counters(), "start_lrs": self._start_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "num_averaged" in state_dict and "num_updates" not in state_dict:  # checkpoints of earlier versions
            state_dict = {**state_dict, "num_updates": state_dict["num_averaged"]}
        super().load_state_dict(state_dict)
        self._start_lrs = state_dict.get("start_lrs")
