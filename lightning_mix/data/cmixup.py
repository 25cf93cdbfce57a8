"""CMixupDataModule: any DataModule, with training batches of anchors and their C-Mixup partners."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_mix.mixing.cmixup_sampler import CMixupBatchSampler

__all__ = ["CMixupDataModule"]


class CMixupDataModule(pl.LightningDataModule):
    """Wrap ``datamodule`` so its training loader draws C-Mixup partners from the whole training set.

    Example::

        from lightning_mix.data import CMixupDataModule
        from lightning_mix.demos import DiabetesDataModule

        data = CMixupDataModule(DiabetesDataModule(batch_size=32), bandwidth=1.0, seed=0)
        # train with the CMixup callback: trainer = Trainer(callbacks=[CMixup(alpha=2.0)])

    ``train_dataloader`` takes the wrapped module's training loader and rebuilds it over the same
    dataset, collate function, workers and pinning with a
    :class:`~lightning_mix.mixing.CMixupBatchSampler` (``batch_size`` anchors, by default the
    wrapped loader's batch size, then their partners). The training labels are read once per call,
    in dataset order, by one pass of an unshuffled loader over the training set (the entry
    ``target_key`` of each batch). Validation, test and predict loaders, ``setup``, ``prepare_data``,
    the transfer hooks and the state are the wrapped module's.

    Use it with :class:`~lightning_mix.callbacks.CMixup`, which mixes the anchors with their
    partners. Under DDP, pass ``use_distributed_sampler=False`` to the Trainer (the batch sampler
    shards the epoch across ranks itself).

    Args:
        datamodule: the DataModule to wrap (its training set must be map-style).
        bandwidth: the label-kernel width, in the units of the targets (the authors tune it per data set).
        batch_size: anchors per batch; None takes the wrapped training loader's batch size.
        seed: seed of the anchor order and of the partner draws.
        drop_last: drop the last incomplete batch (the authors' loop does).
        exclude_self: never pick the anchor as its own partner (the authors allow it).
        target_key: index or key of the targets in a batch.
    """

    def __init__(
        self,
        datamodule: pl.LightningDataModule,
        bandwidth: float = 1.0,
        batch_size: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        exclude_self: bool = False,
        target_key: int | str = 1,
    ) -> None:
        super().__init__()
        if not isinstance(datamodule, pl.LightningDataModule):
            raise TypeError(f"datamodule must be a LightningDataModule, got {type(datamodule).__name__}.")
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 or None, got {batch_size}.")
        self.datamodule = datamodule
        self.bandwidth = float(bandwidth)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.exclude_self = bool(exclude_self)
        self.target_key = target_key
        self.batch_sampler: CMixupBatchSampler | None = None

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)

    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    def _training_labels(self, loader: DataLoader) -> torch.Tensor:
        plain = DataLoader(
            loader.dataset, batch_size=loader.batch_size or 256, shuffle=False, collate_fn=loader.collate_fn
        )
        labels = [torch.as_tensor(batch[self.target_key]) for batch in plain]
        return torch.cat(labels) if labels else torch.empty(0)

    def train_dataloader(self) -> DataLoader:
        loader = self.datamodule.train_dataloader()
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"CMixupDataModule rebuilds the wrapped training loader with a batch sampler and needs one "
                f"torch DataLoader, got {type(loader).__name__}."
            )
        if not hasattr(loader.dataset, "__getitem__") or not hasattr(loader.dataset, "__len__"):
            raise TypeError(
                "C-Mixup draws partners by index: the training dataset must be map-style (__getitem__, __len__)."
            )
        labels = self._training_labels(loader)
        self.batch_sampler = CMixupBatchSampler(
            labels,
            batch_size=self.batch_size or loader.batch_size,
            bandwidth=self.bandwidth,
            seed=self.seed,
            drop_last=self.drop_last,
            exclude_self=self.exclude_self,
        )
        return DataLoader(
            loader.dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
        )

    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.datamodule.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.datamodule.predict_dataloader()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return self.datamodule.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)
