"""MixingCallback: applies a batch mixer (Mixup, CutMix, ...) to every training batch."""

from __future__ import annotations

from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_mix.callbacks._batch_access import BatchKey, get_entry, set_entry
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.mixing import MixedBatch, dense_targets

_DECISION_SALT = 1


def infer_num_classes(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[int]:
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


class MixingCallback(Callback):
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
      smoothing (``num_classes`` is then required). Dense float targets (soft labels, regression
      values) are mixed as they are.
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
    """

    def __init__(
        self,
        mixer: Callable[..., MixedBatch],
        num_classes: Optional[int] = None,
        label_smoothing: float = 0.0,
        p: float = 1.0,
        stop_epoch: Optional[int] = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not callable(mixer):
            raise TypeError(f"mixer must be callable as mixer(inputs, targets, generator), got {type(mixer).__name__}.")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p is a probability and must lie in [0, 1], got {p}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.mixer = mixer
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.p = p
        self.stop_epoch = stop_epoch
        self.input_key = input_key
        self.target_key = target_key
        self.seed = seed
        self.last_mixed: Optional[MixedBatch] = None
        self._stream: Optional[CounterStream] = None
        self._restored: Optional[dict[str, int]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mixer=type(self.mixer).__name__, input_key=self.input_key)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.num_classes is None:
            self.num_classes = infer_num_classes(trainer, pl_module)
        seed = self.seed if self.seed is not None else torch.initial_seed()
        self._stream = CounterStream(seed, rank=trainer.global_rank)
        if self._restored is not None:
            self._stream.seed = self._restored["seed"]
            self._stream.counter = self._restored["counter"]
            self._restored = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        inputs = get_entry(batch, self.input_key, "MixingCallback", "input")
        targets = get_entry(batch, self.target_key, "MixingCallback", "target")
        targets = self._dense(targets)
        stream = self._stream
        mix = self._should_mix(trainer, stream)
        if mix:
            mixed = self.mixer(inputs, targets, generator=stream.generator(inputs.device))
            self.last_mixed = mixed
            set_entry(batch, self.input_key, mixed.inputs)
            targets = mixed.targets
        else:
            self.last_mixed = None
        set_entry(batch, self.target_key, targets)
        stream.advance()

    def _should_mix(self, trainer: pl.Trainer, stream: CounterStream) -> bool:
        if self.stop_epoch is not None and trainer.current_epoch >= self.stop_epoch:
            return False
        if self.p >= 1.0:
            return True
        if self.p <= 0.0:
            return False
        draw = torch.rand((), generator=stream.generator(torch.device("cpu"), salt=_DECISION_SALT))
        return bool(draw < self.p)

    def _dense(self, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            return targets
        if self.num_classes is None:
            raise ValueError(
                "MixingCallback received class-index targets but num_classes is not set and neither the "
                "module nor the datamodule has a num_classes; pass num_classes=<number of classes> so "
                "they can be turned into dense targets."
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
        if self._stream is not None:  # restored after on_fit_start
            self._stream.seed, self._stream.counter = restored["seed"], restored["counter"]
        else:
            self._restored = restored
