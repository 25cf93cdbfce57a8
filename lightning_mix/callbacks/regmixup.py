"""RegMixup: train on the clean batch and a mixed copy of it together (the batch doubles)."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_mix.callbacks._batch_access import BatchKey, get_entry, set_entry
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.callbacks.mixing import infer_num_classes
from lightning_mix.mixing import Mixup, dense_targets


class RegMixup(Callback):
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
    CIFAR-100; keep ``alpha`` in 10 to 20. Each step costs about twice an ERM step.

    The batch must be a list or a dict; validation, test and predict batches are never touched.
    Randomness follows ``MixingCallback`` (seed, global rank and a batch counter, saved in the checkpoint).

    Args:
        alpha: Beta(alpha, alpha) concentration of lam (documented range 10 to 20).
        num_classes: needed for class-index targets; None reads the module's or datamodule's ``num_classes``.
        label_smoothing: smoothing applied when class indices are made dense.
        mode: ``"batch"`` (one lam per step, as the authors), ``"elem"`` (one per sample) or ``"pair"`` (with ``pairing="flip"``).
        pairing: partner rule of :class:`~lightning_mix.mixing.Mixup` (``"random"``, ``"flip"``, ``"roll"``,
            ``"different_class"``, ...).
        input_key: index or key of the inputs in the batch.
        target_key: index or key of the targets in the batch.
        seed: seed of the mixing stream; None takes ``torch.initial_seed()``.
    """

    def __init__(
        self,
        alpha: float = 10.0,
        num_classes: Optional[int] = None,
        label_smoothing: float = 0.0,
        mode: str = "batch",
        pairing: str = "random",
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        self._mixup = Mixup(alpha=alpha, mode=mode, pairing=pairing)  # validates alpha, mode and pairing
        self.alpha = alpha
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mode = mode
        self.pairing = pairing
        self.input_key = input_key
        self.target_key = target_key
        self.seed = seed
        self.last_index: Optional[torch.Tensor] = None
        self.last_lam: Optional[torch.Tensor] = None
        self._stream: Optional[CounterStream] = None
        self._restored: Optional[dict[str, int]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(input_key=self.input_key)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.num_classes is None:
            self.num_classes = infer_num_classes(trainer, pl_module)
        seed = self.seed if self.seed is not None else torch.initial_seed()
        self._stream = CounterStream(seed, rank=trainer.global_rank)
        if self._restored is not None:
            self._stream.seed, self._stream.counter = self._restored["seed"], self._restored["counter"]
            self._restored = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        inputs = get_entry(batch, self.input_key, "RegMixup", "input")
        targets = self._dense(get_entry(batch, self.target_key, "RegMixup", "target"))
        mixed = self._mixup(inputs, targets, generator=self._stream.generator(inputs.device))
        self._stream.advance()
        self.last_index, self.last_lam = mixed.index, mixed.lam
        set_entry(batch, self.input_key, torch.cat([inputs, mixed.inputs], dim=0))
        set_entry(batch, self.target_key, torch.cat([targets, mixed.targets], dim=0))

    def _dense(self, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            return targets
        if self.num_classes is None:
            raise ValueError(
                "RegMixup received class-index targets but num_classes is not set and neither the "
                "module nor the datamodule has a num_classes; pass num_classes=<number of classes>."
            )
        return dense_targets(targets, self.num_classes, self.label_smoothing)

    def state_dict(self) -> dict[str, Any]:
        if self._stream is None:
            return {}
        return {"seed": self._stream.seed, "counter": self._stream.counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        restored = {"seed": int(state_dict["seed"]), "counter": int(state_dict["counter"])}
        if self._stream is not None:
            self._stream.seed, self._stream.counter = restored["seed"], restored["counter"]
        else:
            self._restored = restored
