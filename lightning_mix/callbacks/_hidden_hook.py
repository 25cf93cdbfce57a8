"""The base of the callbacks that mix a hidden layer's output through a one-shot forward hook."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._mixing_base import MixingCallbackBase


class HiddenMixingBase(MixingCallbackBase):
    """A :class:`MixingCallbackBase` whose training step may arm one forward hook, held in ``_handle``.

    The hook is removed by its handle (:meth:`_remove_hook`) at the end of each training batch, at
    validation start, on an exception and at teardown, so it never outlives the step that armed it.
    """

    _handle: torch.utils.hooks.RemovableHandle | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._remove_hook()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hook()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


__all__ = ["HiddenMixingBase"]
