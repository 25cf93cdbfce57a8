"""RegMixup: train on the clean batch and a mixed copy of it together (the batch doubles)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._mixing_base import MixingCallbackBase
from lightning_mix.mixing import Mixup

__all__ = ["RegMixup"]


class RegMixup(MixingCallbackBase):
    """RegMixup (Pinto et al. 2022): mixup as a regulariser added to clean training.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import RegMixup
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        trainer = Trainer(max_epochs=10, callbacks=[RegMixup(alpha=10.0, num_classes=10)])
        trainer.fit(SmallCNN(), MNIST5kDataModule())

    The paper's loss is ``CE(clean) + eta * CE(mixed)`` with ``eta = 1``. This callback produces
    it without touching the training step: in ``on_train_batch_start`` the batch of ``B`` samples
    becomes ``2B`` samples, the clean ones followed by a mixed copy
    (``x_mix = lam * x + (1 - lam) * x[index]``), and the targets (made dense) likewise. A
    training step that takes the batch-mean soft cross-entropy then optimises
    ``(CE(clean) + CE(mixed)) / 2``, the paper's loss up to a constant factor. BatchNorm sees the
    clean and mixed samples together, as in the authors' code.

    ``alpha`` is large on purpose: RegMixup wants mixes far from both sources (lam near 0.5),
    because the clean term already covers the data. The authors use 20 on CIFAR-10 and 10 on
    CIFAR-100; keep ``alpha`` in 10 to 20. Each step costs about twice an ERM step. With
    ``alpha=1.0, mode="elem"`` the same loss is the one a MixupMP ensemble member is trained with
    (Wu and Williamson 2024; the recipe is in the evaluation guide, next to ``Ensemble``).

    The batch must be a list or a dict; validation, test and predict batches are never touched.
    Randomness follows ``MixingCallback`` (seed, global rank and a batch counter, saved in the checkpoint).

    Args:
        alpha: Beta(alpha, alpha) concentration of lam (documented range 10 to 20).
        num_classes: needed for class-index targets; None reads the module's or datamodule's ``num_classes``.
        label_smoothing: smoothing applied when class indices are made dense.
        mode: ``"batch"`` (one lam per step, as the authors), ``"elem"`` (one per sample) or ``"pair"``
            (with ``pairing="flip"``).
        pairing: partner rule of :class:`~lightning_mix.mixing.Mixup` (``"random"``, ``"flip"``, ``"roll"``,
            ``"different_class"``, ...).
        input_key: index or key of the inputs in the batch.
        target_key: index or key of the targets in the batch.
        seed: seed of the mixing stream; None takes ``torch.initial_seed()``.
        stop_epoch: from this epoch on the batch stays the B clean samples (targets made dense), so
            the loss is plain CE; None mixes throughout.
        regression: the targets are regression values (float, (B,) or (B, d)), mixed as they are.
    """

    def __init__(
        self,
        alpha: float = 10.0,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        mode: str = "batch",
        pairing: str = "random",
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
        stop_epoch: int | None = None,
        regression: bool = False,
    ) -> None:
        super().__init__(num_classes, label_smoothing, input_key, target_key, seed, stop_epoch, regression)
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        self._mixup = Mixup(alpha=alpha, mode=mode, pairing=pairing)  # validates alpha, mode and pairing
        self.alpha = alpha
        self.mode = mode
        self.pairing = pairing
        self.last_index: torch.Tensor | None = None
        self.last_lam: torch.Tensor | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(input_key=self.input_key)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs, targets = self.read_batch(batch)
        if not self.mixing_active(trainer):
            self.last_index, self.last_lam = None, None
            set_entry(batch, self.target_key, targets)
            return
        mixed = self._mixup(inputs, targets, generator=self.generator(inputs.device))
        self.advance()
        self.last_index, self.last_lam = mixed.index, mixed.lam
        set_entry(batch, self.input_key, torch.cat([inputs, mixed.inputs], dim=0))
        set_entry(batch, self.target_key, torch.cat([targets, mixed.targets], dim=0))
