"""Exponential moving average (EMA) of the weights, kept by a callback.

The callback decides *when* (after real optimizer steps, from which step, how often, when to
swap the average in); :mod:`lightning_mix.averaging` decides *what* (one foreach lerp over every
tensor, float32 accumulators, integer buffers copied).
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
from torch import Tensor

from lightning_mix.averaging.ema import ema_update_
from lightning_mix.averaging.schedules import ema_decay_at
from lightning_mix.callbacks._weight_averaging import _WeightAveraging

__all__ = ["EMA"]


class EMA(_WeightAveraging):
    r"""Keep an exponential moving average of the weights, validate with it, and (as the owner) end the fit with it.

    After every optimizer step (``trainer.global_step`` advanced, so gradient accumulation counts
    real steps only), ``ema <- d * ema + (1 - d) * weights`` over all parameters and floating
    buffers (BatchNorm running statistics included) in one foreach kernel, with a float32 copy
    whatever the model's dtype (a bf16 copy would never move) and integer buffers copied.

    Schedule (:func:`~lightning_mix.averaging.ema_decay_at`): the EMA starts as a copy of the
    weights at optimizer step ``start_step`` (0: the initial weights) and from then on is updated
    every ``update_every_n_steps`` steps with ``decay``, or with ``warmup=True`` with
    ``min(decay, max(min_decay, 1 - (1 + t / inv_gamma) ** -power))``, ``t`` the steps since the start.

    Evaluation during fit: ``evaluate="ema"`` validates with the EMA weights, ``"raw"`` with the
    trained weights. The EMA is swapped in only once it has been updated after at least one
    optimizer step (never a never-updated copy, unlike Lightning's callback, #21724). To measure
    both, validate the raw model with ``evaluate="raw"`` and the EMA with
    ``trainer.validate(model)`` after fit (the module then holds the EMA). (``evaluate="both"``
    was removed: it replaced the module's ``validation_step`` and ``log``.)

    End of fit: the owner of the final weights (``owns_final_weights``, see
    :mod:`~lightning_mix.callbacks._ownership`; the default ``None`` owns them unless another
    averaging callback does) loads the EMA into the module in ``on_train_end``, so
    ``trainer.test``/``predict`` and checkpoints saved afterwards use it. With
    ``owns_final_weights=False`` the module keeps the trained (or the owner's) weights and the EMA
    stays available through :meth:`averaged_state_dict`. Another ``fit`` with the same callback
    puts the trained weights back and starts a new EMA (unless it resumes from a checkpoint).

    Checkpoints (owner with ``evaluate="ema"``, or after fit): Lightning's ``WeightAveraging``
    layout, ``state_dict`` = the EMA (float32), ``current_model_state`` = the trained weights,
    ``averaging_state`` = ``{"n_averaged"}``; so ``Model.load_from_checkpoint(path)`` and
    ``trainer.validate/test/predict(ckpt_path=path)`` use the EMA (what the fit evaluated) and
    ``trainer.fit(model, ckpt_path=path)`` resumes both exactly. Otherwise ``state_dict`` holds the
    trained weights and the EMA is kept in the callback's state.

    DDP: parameters are identical on every rank; each rank's EMA of the BatchNorm statistics is its
    own, the module gets their mean over ranks when the EMA is swapped in, and checkpoints keep
    every rank's own so that resume is exact. Sharded strategies (FSDP, DeepSpeed, ModelParallel)
    raise at setup (each rank would hold the average of its own shard only).

    Args:
        decay: EMA decay in [0, 1) (weight of the old average); 0.999 averages over ~1000 steps.
        warmup: use the warmup schedule above instead of a constant decay.
        inv_gamma: warmup time scale (in optimizer steps).
        power: warmup exponent (2/3 for long runs, 3/4 for shorter ones).
        min_decay: lower clamp of the warmup decay.
        update_every_n_steps: update every n optimizer steps (counted from ``start_step``).
        start_step: optimizer step at which the EMA starts as a copy of the weights.
        device: where the EMA copy lives (``"cpu"`` keeps it off the accelerator); default: with
            the model.
        evaluate: ``"ema"`` or ``"raw"``: the weights validation during fit runs on.
        owns_final_weights: ``True``: put the EMA in the module at the end of fit (an error if
            another callback claims it too); ``False``: never; ``None``: yes unless another weight
            owner (``SWA``, ``ModelSoup``) is in the Trainer, in which case setup raises and asks.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import EMA
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        trainer = Trainer(max_epochs=5, callbacks=[EMA(decay=0.999, warmup=True)])
        trainer.fit(SmallCNN(), MNIST5kDataModule())   # val/acc is measured on the EMA weights
        trainer.test(datamodule=MNIST5kDataModule())   # so is the test, after fit
    """

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = False,
        inv_gamma: float = 1.0,
        power: float = 2.0 / 3.0,
        min_decay: float = 0.0,
        update_every_n_steps: int = 1,
        start_step: int = 0,
        device: str | None = None,
        evaluate: Literal["ema", "raw"] = "ema",
        owns_final_weights: bool | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay} (0.999 is a common choice).")
        if warmup and not 0.0 <= min_decay <= decay:
            raise ValueError(f"min_decay must lie in [0, decay={decay}], got {min_decay}.")
        if inv_gamma <= 0 or power <= 0:
            raise ValueError(f"inv_gamma and power must be > 0, got inv_gamma={inv_gamma}, power={power}.")
        if update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps must be >= 1, got {update_every_n_steps}.")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}.")
        if evaluate == "both":
            raise ValueError(
                "EMA(evaluate='both') was removed: it replaced the module's validation_step and log. Validate with "
                "evaluate='ema' (or 'raw') during fit, and run trainer.validate(model) after fit for the other one."
            )
        if evaluate not in ("ema", "raw"):
            raise ValueError(f"evaluate must be 'ema' or 'raw', got {evaluate!r}.")
        super().__init__(device=device, owns_final_weights=owns_final_weights)
        self.decay = decay
        self.warmup = warmup
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_decay = min_decay
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self.evaluate = evaluate

    @property
    def num_updates(self) -> int:
        """How many times the EMA was updated after an optimizer step (the start copy at step >= 1 counts)."""
        return self._num_updates

    # ------------------------------------------------------------------ schedule and rule
    def decay_at(self, step: int) -> float | None:
        """Decay of the update after optimizer step ``step``; ``None`` means no update at that step."""
        if (step - self.start_step) % self.update_every_n_steps != 0 and step > self.start_step:
            return None
        return ema_decay_at(
            step,
            self.decay,
            start_step=self.start_step,
            warmup=self.warmup,
            inv_gamma=self.inv_gamma,
            power=self.power,
            min_decay=self.min_decay,
        )

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and self.decay_at(step_idx) is not None

    def _average_into(self, average: list[Tensor], live: list[Tensor], step_idx: int | None) -> None:
        assert step_idx is not None
        decay = self.decay_at(step_idx)
        assert decay is not None
        ema_update_(average, live, decay)

    def _evaluates_average(self) -> bool:
        return self.evaluate == "ema"

    def _copies_at_fit_start(self, trainer: pl.Trainer) -> bool:
        return self.start_step == 0

    def _never_updated_message(self, trainer: pl.Trainer) -> str:
        return (
            "EMA was never updated during fit (start_step beyond the last optimizer step?); "
            "the module keeps its trained weights."
        )
