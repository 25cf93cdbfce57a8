"""CMixup: C-Mixup as its authors run it, mixing each anchor with a partner drawn from the whole training set."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._mixing_base import MixingCallbackBase
from lightning_mix.mixing import MixedBatch
from lightning_mix.mixing.cmixup_sampler import CMixupBatchSampler, PartnerMixup

__all__ = ["CMixup"]


class CMixup(MixingCallbackBase):
    """Mix every training batch of anchors and partners (from :class:`~lightning_mix.mixing.CMixupBatchSampler`).

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import CMixup
        from lightning_mix.data import CMixupDataModule
        from lightning_mix.demos import DiabetesDataModule, MLPRegressor

        data = CMixupDataModule(DiabetesDataModule(batch_size=32), bandwidth=1.0, seed=0)
        Trainer(max_epochs=100, callbacks=[CMixup(alpha=2.0, seed=0)]).fit(MLPRegressor(), datamodule=data)

    The training loader must batch with a :class:`~lightning_mix.mixing.CMixupBatchSampler`
    (:class:`~lightning_mix.data.CMixupDataModule` builds it around any DataModule): each batch then
    holds ``B`` anchors followed by the ``B`` partners drawn for them from the whole training set
    by the label kernel. In ``on_train_batch_start`` the callback replaces the inputs and targets by
    the ``B`` mixed rows of :class:`~lightning_mix.mixing.PartnerMixup` (one lam per batch from
    Beta(alpha, alpha)), which ``training_step`` then sees; from ``stop_epoch`` on it keeps the
    ``B`` anchors unmixed. Other entries of a batch (e.g. sample weights) keep their ``2 B`` rows.
    Targets are mixed as values (regression). A loader without the batch sampler is an error at
    ``on_train_start``, before any step. The last mix is kept in :attr:`last_mixed`
    (``index[i] = B + i``, the partner's row in the ``2 B``-row batch).

    Randomness and resume as :class:`~lightning_mix.callbacks.MixingCallback`: the lam stream is
    seeded from ``seed`` (or ``torch.initial_seed()``), the global rank and a batch counter stored
    in the checkpoint; the partners are the sampler's (seeded by its own ``seed`` and the epoch).

    Args:
        alpha: Beta concentration of lam (the authors use 2, 1.5 on exchange-rate).
        stop_epoch: no mixing from this epoch on; None mixes throughout.
        input_key: index or key of the inputs in the batch.
        target_key: index or key of the targets in the batch.
        seed: seed of the lam stream; None takes ``torch.initial_seed()``.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        stop_epoch: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(None, 0.0, input_key, target_key, seed, stop_epoch, regression=True)
        self.mixer = PartnerMixup(alpha)
        self.last_mixed: MixedBatch | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(input_key=self.input_key)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not (isinstance(loader, DataLoader) and isinstance(loader.batch_sampler, CMixupBatchSampler)):
            found = type(loader.batch_sampler).__name__ if isinstance(loader, DataLoader) else type(loader).__name__
            raise ValueError(
                f"CMixup mixes anchors with partners drawn from the whole training set, which the training "
                f"loader must fetch: it needs DataLoader(..., batch_sampler=CMixupBatchSampler(...)), found "
                f"{found}. Wrap the data: CMixupDataModule(your_datamodule, bandwidth=...) (in YAML: "
                "data.class_path: lightning_mix.data.CMixupDataModule with init_args.datamodule), or use "
                "MixingCallback(Mixup(alpha=2.0, mode='elem', pairing='label_kernel'), regression=True) "
                "for the in-batch variant."
            )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs, targets = self.read_batch(batch)
        if self.mixing_active(trainer):
            mixed = self.mixer(inputs, targets, generator=self.generator(inputs.device))
            inputs, targets = mixed.inputs, mixed.targets
            self.last_mixed = mixed
        else:
            half = inputs.shape[0] // 2
            inputs, targets = inputs[:half], targets[:half]
            self.last_mixed = None
        set_entry(batch, self.input_key, inputs)
        set_entry(batch, self.target_key, targets)
        self.advance()
