"""MixingCallback: applies a batch mixer (Mixup, CutMix, ...) to every training batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._mixing_base import MixingCallbackBase
from lightning_mix.mixing import MixedBatch

__all__ = ["MixingCallback"]

_DECISION_SALT = 1


class MixingCallback(MixingCallbackBase):
    """Mix each training batch in place with ``mixer`` before ``training_step`` sees it.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import MixingCallback
        from lightning_mix.mixing import CutMix, Mixup, RandomChoice

        mixing = MixingCallback(RandomChoice([Mixup(0.8), CutMix(1.0)]), num_classes=10, label_smoothing=0.1)
        trainer = Trainer(max_epochs=10, callbacks=[mixing])
        trainer.fit(model, datamodule)   # training_step receives mixed inputs and dense targets

    What it does, in ``on_train_batch_start``:

    * Class-index targets (integer, shape (B,)) become dense targets (B, C) with optional label
      smoothing (``num_classes`` is then required). Dense float targets (B, C) (soft labels) are
      mixed as they are. Float targets of shape (B,) are an error (class labels stored as floats)
      unless ``regression=True``, which mixes float targets of any shape as values (C-Mixup).
    * With probability ``p`` the mixer replaces ``batch[input_key]`` and ``batch[target_key]``.
      When ``p`` skips a batch, or from ``stop_epoch`` on, targets are still made dense so the loss
      always sees one format.
    * Validation, test and predict batches are never touched.

    The batch must be a list or a dict (what ``default_collate`` produces): a callback can mutate
    a batch but not replace it, so a tuple batch raises an error that explains the fix.

    Randomness: each batch gets a generator on the batch's device, seeded from ``seed`` (or, when
    None, ``torch.initial_seed()`` at the start of fit, which ``seed_everything`` sets), the global
    rank and a batch counter. DDP ranks therefore draw different lam, and the counter and seed are
    stored in the checkpoint, so a resumed run continues the lam sequence of an uninterrupted one.

    The last mix is kept in :attr:`last_mixed` (a :class:`~lightning_mix.mixing.MixedBatch` with
    ``index`` and ``lam``) for losses that need the pairs, e.g. decoupled mixup::

        mixed = self.trainer.callbacks[0].last_mixed   # or find it by type

    Args:
        mixer: any callable ``mixer(inputs, targets, generator=None) -> MixedBatch``.
        num_classes: number of classes, needed when the targets are class indices. None takes it
            from the module's ``hparams.num_classes`` (or ``num_classes`` attribute), else from the
            datamodule's, at the start of fit.
        label_smoothing: ``s`` in ``off = s / C, on = 1 - s + off`` for class-index targets.
        p: probability of mixing a batch.
        stop_epoch: no mixing from this epoch on ("early-stopped mixup"); None mixes throughout.
        input_key: index or key of the inputs in the batch.
        target_key: index or key of the targets in the batch.
        seed: seed of the mixing stream; None takes ``torch.initial_seed()``.
        regression: the targets are regression values (float, (B,) or (B, d)), mixed as they are.

    A second mixing callback in the same Trainer (or a RankMixupMixin module) is an error at setup.
    """

    def __init__(
        self,
        mixer: Callable[..., MixedBatch],
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        p: float = 1.0,
        stop_epoch: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
        regression: bool = False,
    ) -> None:
        super().__init__(num_classes, label_smoothing, input_key, target_key, seed, stop_epoch, regression)
        if not callable(mixer):
            raise TypeError(f"mixer must be callable as mixer(inputs, targets, generator), got {type(mixer).__name__}.")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p is a probability and must lie in [0, 1], got {p}.")
        self.mixer = mixer
        self.p = p
        self.last_mixed: MixedBatch | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mixer=type(self.mixer).__name__, input_key=self.input_key)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs, targets = self.read_batch(batch)
        if self._should_mix(trainer):
            mixed = self.mixer(inputs, targets, generator=self.generator(inputs.device))
            self.last_mixed = mixed
            set_entry(batch, self.input_key, mixed.inputs)
            targets = mixed.targets
        else:
            self.last_mixed = None
        set_entry(batch, self.target_key, targets)
        self.advance()

    def _should_mix(self, trainer: pl.Trainer) -> bool:
        if not self.mixing_active(trainer):
            return False
        return self._draw_decision(self.p, _DECISION_SALT)
