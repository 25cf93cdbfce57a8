"""Exponential moving average (EMA) of the weights, kept by a callback.

The callback decides *when* (after real optimizer steps, from which step, how often, when to
swap the average in); :mod:`lightning_mix.averaging` decides *what* (one foreach lerp over every
tensor, float32 accumulators, integer buffers copied).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lightning_mix.averaging.ema import _module_named_tensors, averaging_copy, copy_tensors_, ema_update_
from lightning_mix.averaging.schedules import ema_decay_at
from lightning_mix.callbacks._trainer_state import check_not_sharded

__all__ = ["EMA"]


class _AveragedWeights:
    """The bookkeeping both averaging callbacks share: the module's live tensors, an averaged copy,
    and a backup of the raw weights while the average sits in the module."""

    def __init__(self) -> None:
        self.entries: list[tuple[list[str], Tensor]] = []
        self._live: list[Tensor] = []
        self.average: list[Tensor] | None = None
        self.backup: list[Tensor] | None = None
        self.in_module = False  # True while the module holds the average (backup holds the raw weights)

    def bind(self, module: torch.nn.Module) -> None:
        self.entries = _module_named_tensors(module)
        # the live Parameter/buffer objects themselves (not detached views, which would go stale if a
        # parameter's .data were replaced); every update and copy runs under no_grad
        self._live = [tensor for _, tensor in self.entries]
        self.module_id = id(module)

    def reset(self, module: torch.nn.Module) -> None:
        """Forget the average; if ``module`` holds it (after an earlier fit), put its raw weights back."""
        if self.in_module and getattr(self, "module_id", None) == id(module):
            self.swap_out()
        self.entries, self._live, self.average, self.backup = [], [], None, None
        self.in_module = False

    @property
    def live(self) -> list[Tensor]:
        return self._live

    def start(self, device: torch.device | str | None) -> None:
        self.average = averaging_copy(self.live, device=device)

    def load_average(self, source: dict[str, Any], device: torch.device | str | None) -> None:
        """Average from a state dict (by name), float32 for floating tensors."""
        out = []
        for names, tensor in self.entries:
            value = source.get(names[0])
            if value is None:
                raise KeyError(f"The checkpoint's averaged weights lack {names[0]!r}; was it saved from another model?")
            target = tensor.device if device is None else torch.device(device)
            dtype = torch.float32 if value.is_floating_point() else value.dtype
            out.append(value.detach().to(device=target, dtype=dtype, copy=True))
        self.average = out

    def state_dict_of(self, tensors: list[Tensor], base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (a module state dict) with every averaged entry replaced by ``tensors``."""
        out = dict(base)
        for (names, _), value in zip(self.entries, tensors):
            for name in names:
                out[name] = value.detach().clone()
        return out

    @property
    def swapped(self) -> bool:
        return self.in_module

    def sync_buffers(self) -> None:
        """Average the floating *buffers* of the average across DDP ranks (a collective: all ranks call it).

        DDP keeps parameters identical but lets each rank's BatchNorm statistics drift between the
        broadcasts at each forward, so the per-rank averages of those buffers differ; their mean over
        ranks is the average of the rank-mean statistics (the update is linear) and identical everywhere.
        """
        dist = torch.distributed
        if self.average is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        chosen = [
            avg
            for (_, live), avg in zip(self.entries, self.average)
            if not isinstance(live, torch.nn.Parameter) and avg.is_floating_point()
        ]
        if not chosen:
            return
        device = self.entries[0][1].device
        flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in chosen])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for t, value in zip(chosen, flat.split([t.numel() for t in chosen])):
            t.copy_(value.view_as(t))

    def swap_in(self, sync: bool = True) -> None:
        """Put the average into the module, keeping the raw weights (lossless for any dtype)."""
        assert self.average is not None
        if sync:
            self.sync_buffers()
        live = self.live
        if self.backup is None:
            self.backup = [tensor.detach().clone() for tensor in live]
        else:
            copy_tensors_(self.backup, live)
        copy_tensors_(live, self.average)
        self.in_module = True

    def swap_out(self, keep_buffer: bool = False) -> None:
        """Restore the raw weights into the module."""
        if self.in_module and self.backup is not None:
            copy_tensors_(self.live, self.backup)
        self.in_module = False
        if not keep_buffer:
            self.backup = None


def _ema_metric_name(name: str) -> str:
    """``val/acc`` -> ``val_ema/acc``; ``val_loss`` -> ``val_loss_ema``."""
    head, sep, rest = name.partition("/")
    return f"{head}_ema/{rest}" if sep else f"{name}_ema"


class EMA(Callback):
    r"""Keep an exponential moving average of the weights and validate with it.

    After every optimizer step (``trainer.global_step`` advanced, so gradient accumulation counts
    real steps only), ``ema <- d * ema + (1 - d) * weights`` over all parameters and floating
    buffers (BatchNorm running statistics included) in one foreach kernel, with a float32 copy
    whatever the model's dtype (a bf16 copy would never move) and integer buffers copied.

    Schedule (:func:`~lightning_mix.averaging.ema_decay_at`): the EMA starts as a copy of the
    weights at optimizer step ``start_step`` (0: the initial weights) and from then on is updated
    every ``update_every_n_steps`` steps with ``decay``, or with ``warmup=True`` with
    ``min(decay, max(min_decay, 1 - (1 + t / inv_gamma) ** -power))``, ``t`` the steps since the start.

    Evaluation: with ``evaluate="ema"`` validation runs on the EMA weights, with ``"raw"`` on the
    trained weights, with ``"both"`` each validation batch runs twice and everything the module
    logs with the EMA weights is renamed (``val/acc`` -> ``val_ema/acc``, ``val_loss`` ->
    ``val_loss_ema``). The EMA is swapped in only once it has been updated after at least one
    optimizer step (never a never-updated copy, unlike Lightning's callback, #21724). ``"both"``
    calls ``validation_step`` twice per batch: torchmetrics ``Metric`` objects updated inside it
    would mix both passes, so log tensors (or use ``"ema"``) with stateful metrics; other callbacks
    (``on_validation_batch_end``) receive the outputs of the raw pass.

    End of fit: the EMA weights are loaded into the module, so ``trainer.test``, ``predict`` and
    checkpoints saved afterwards use them; the callback keeps the raw weights for checkpoints.
    Another ``fit`` with the same callback puts the trained weights back and starts a new EMA
    (unless it resumes from a checkpoint, which restores the EMA).

    Checkpoints use the layout of Lightning's ``WeightAveraging``: ``checkpoint["state_dict"]``
    holds the EMA weights (float32), ``checkpoint["current_model_state"]`` the trained ones, so
    ``Model.load_from_checkpoint(path)`` gives the EMA model and ``trainer.fit(model,
    ckpt_path=path)`` resumes both exactly.

    DDP: every rank holds identical weights and makes identical updates, so nothing is
    communicated. Sharded strategies (FSDP, DeepSpeed, ModelParallel) are not supported: the
    callback raises at setup (each rank would hold the average of its own shard only).

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
        evaluate: ``"ema"``, ``"raw"`` or ``"both"`` (see above).

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
        evaluate: Literal["ema", "raw", "both"] = "ema",
    ) -> None:
        super().__init__()
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
        if evaluate not in ("ema", "raw", "both"):
            raise ValueError(f"evaluate must be 'ema', 'raw' or 'both', got {evaluate!r}.")
        self.decay = decay
        self.warmup = warmup
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_decay = min_decay
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self.device = torch.device(device) if device is not None else None
        self.evaluate = evaluate

        self._weights = _AveragedWeights()
        self._num_updates = 0  # updates made after an optimizer step (the start copy at step >= 1 counts)
        self._last_step = 0  # global_step of the last step handled
        self._loaded_average: dict[str, Any] | None = None
        self._original_validation_step: Any = None
        self._validation_swapped = False

    # ------------------------------------------------------------------ public read-only state
    @property
    def num_updates(self) -> int:
        """How many times the EMA was updated after an optimizer step."""
        return self._num_updates

    @property
    def averaged_tensors(self) -> list[Tensor] | None:
        """The float32 EMA tensors (module ``state_dict`` order, tied tensors once), or None before the start."""
        return self._weights.average

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The EMA weights as a state dict of the module (empty before the EMA started)."""
        if self._weights.average is None:
            return {}
        return self._weights.state_dict_of(self._weights.average, {})

    # ------------------------------------------------------------------ schedule
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

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_not_sharded(trainer, "EMA")
            # every fit starts a new EMA (a checkpoint restored next brings the old one back); a module
            # that holds the EMA of an earlier fit gets its trained weights back first
            self._weights.reset(pl_module)
            self._num_updates = 0
            self._last_step = 0
            self._loaded_average = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weights = self._weights
        weights.bind(pl_module)
        if self._loaded_average is not None:
            weights.load_average(self._loaded_average, self.device)
            self._loaded_average = None
        elif weights.average is None and self.start_step == 0 and trainer.global_step == 0:
            weights.start(self.device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step <= self._last_step:
            return  # no optimizer step since the last call (gradient accumulation)
        self._last_step = step
        decay = self.decay_at(step)
        if decay is None:
            return
        weights = self._weights
        if weights.average is None:
            weights.start(self.device)  # first update: the EMA starts as a copy (whatever the decay)
        else:
            ema_update_(weights.average, weights.live, decay)
        self._num_updates += 1

    def _should_swap(self, trainer: pl.Trainer) -> bool:
        return (
            trainer.state.fn == TrainerFn.FITTING
            and self._weights.average is not None
            and self._num_updates > 0
            and not self._weights.swapped
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_swap(trainer):
            return
        if self.evaluate == "ema":
            self._weights.swap_in()
            self._validation_swapped = True
        elif self.evaluate == "both":
            self._wrap_validation_step(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._original_validation_step is not None:
            self._unwrap_validation_step(pl_module)
            self._weights.swap_out()
        elif self._validation_swapped:
            self._weights.swap_out()
        self._validation_swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._weights.average is None or self._num_updates == 0:
            warnings.warn(
                "EMA was never updated during fit (start_step beyond the last optimizer step?); "
                "the module keeps its trained weights.",
                stacklevel=2,
            )
            return
        if not self._weights.swapped:
            self._weights.swap_in()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._original_validation_step is not None:
            self._unwrap_validation_step(pl_module)
            self._weights.swap_out()
        elif self._validation_swapped:
            self._weights.swap_out()  # leave the trained weights in the module, as outside validation
        self._validation_swapped = False

    # ------------------------------------------------------------------ evaluate="both"
    def _wrap_validation_step(self, pl_module: pl.LightningModule) -> None:
        original = pl_module.validation_step
        weights = self._weights
        weights.sync_buffers()  # once per validation epoch, not per batch
        self._original_validation_step = original

        def validation_step_raw_and_ema(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            weights.swap_in(sync=False)
            log = pl_module.log

            def log_renamed(name: str, *a: Any, **k: Any) -> None:
                log(_ema_metric_name(name), *a, **k)

            pl_module.log = log_renamed  # type: ignore[method-assign]
            try:
                original(*args, **kwargs)
            finally:
                del pl_module.log
                weights.swap_out(keep_buffer=True)
            return out

        pl_module.validation_step = validation_step_raw_and_ema  # type: ignore[method-assign]

    def _unwrap_validation_step(self, pl_module: pl.LightningModule) -> None:
        if "validation_step" in vars(pl_module):
            del pl_module.validation_step
        if "log" in vars(pl_module):
            del pl_module.log
        self._original_validation_step = None

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "num_updates": self._num_updates,
            "last_step": self._last_step,
            "started": self._weights.average is not None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._num_updates = int(state_dict["num_updates"])
        self._last_step = int(state_dict["last_step"])
        if not state_dict.get("started", True):
            self._loaded_average = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        weights = self._weights
        if weights.average is None or not weights.entries:
            return
        module_state = checkpoint["state_dict"]
        raw = weights.backup if weights.swapped else [tensor for _, tensor in weights.entries]
        checkpoint["current_model_state"] = weights.state_dict_of(raw, module_state)
        checkpoint["state_dict"] = weights.state_dict_of(weights.average, module_state)
        # what Lightning's WeightAveraging/AveragedModel expects next to them
        checkpoint["averaging_state"] = {"n_averaged": torch.tensor(self._num_updates, dtype=torch.long)}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if "current_model_state" not in checkpoint:
            return  # a checkpoint without an EMA: both start from its weights
        self._loaded_average = checkpoint["state_dict"]
        pl_module.load_state_dict(checkpoint["current_model_state"], strict=pl_module.strict_loading)
        if "averaging_state" in checkpoint and "n_averaged" in checkpoint["averaging_state"]:
            self._num_updates = int(checkpoint["averaging_state"]["n_averaged"])
