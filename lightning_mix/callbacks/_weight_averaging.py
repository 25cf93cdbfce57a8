"""The one base of the weight-averaging callbacks (``EMA``, ``SWA``): what is the same for every average.

Modelled on Lightning's ``WeightAveraging`` (a subclass says *when* with :meth:`should_update` and
*how* with :meth:`_average_into`); this base owns the rest, once:

- **the copy**: a float32 copy of every parameter and persistent floating buffer (integer buffers
  copied), tied tensors once; updated only after real optimizer steps (gradient accumulation) or
  at the epoch's last training batch (before the epoch-end validation and checkpoint);
- **swap in / out**: the average goes into the module (the trained weights kept losslessly) for
  validation when the subclass evaluates with it, and at ``on_train_end`` when this callback owns
  the final weights (:mod:`~lightning_mix.callbacks._ownership`; ``owns_final_weights``);
- **checkpoints**: ``state_dict`` holds what the module is evaluated with. For the owner, once the
  average is what validation (or the end of fit) uses, ``state_dict`` = the average (float32),
  ``current_model_state`` = the trained weights, ``averaging_state`` = ``{"n_averaged": ...}``
  (Lightning's ``WeightAveraging`` layout, so checkpoints interchange with it). Otherwise the
  average lives in the callback's own state and ``state_dict`` is left alone.
  ``fit(ckpt_path=...)`` restores both; ``validate``/``test``/``predict(ckpt_path=...)`` and
  ``load_from_checkpoint`` use ``state_dict`` as saved, i.e. what the end of that fit used;
- **DDP**: parameters are identical on every rank, BatchNorm-like buffers are not (each rank updates
  its own between DDP's broadcasts), so each rank's average of the buffers differs. DDP takes rank
  0's buffers as the module's (``broadcast_buffers``; Lightning saves rank 0's), so rank 0's
  average is the average: every rank gets it whenever the average is swapped in, written to a
  checkpoint or made final. Rank 0's own run does not depend on the other ranks' buffers, so a
  resumed DDP run ends bitwise as an uninterrupted one (as single-process resume does). (The other
  ranks' buffers do not survive a resume: DDP broadcasts rank 0's at the first forward after it,
  where an uninterrupted run after validation does not, so an average over ranks cannot resume
  exactly.);
- **weights-only checkpoints**: Lightning does not call callbacks when ``save_weights_only=True``,
  so such files hold the module's trained weights and no average; setup warns about it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_mix.averaging.ema import _module_named_tensors, averaging_copy, copy_tensors_
from lightning_mix.callbacks._ownership import WeightOwner, resolve_weight_owner
from lightning_mix.callbacks._trainer_state import check_not_sharded, is_last_training_batch

__all__ = ["_AveragedWeights", "_WeightAveraging"]


def _distributed_world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AveragedWeights:
    """A module's live tensors, a float32 averaged copy, and the trained weights while the module holds the average."""

    def __init__(self) -> None:
        self.entries: list[tuple[list[str], Tensor]] = []
        self._live: list[Tensor] = []
        self.average: list[Tensor] | None = None
        self.backup: list[Tensor] | None = None
        self.in_module = False  # True while the module holds the average (backup holds the trained weights)
        self.module_id: int | None = None

    def bind(self, module: torch.nn.Module) -> None:
        self.entries = _module_named_tensors(module)
        # the live Parameter/buffer objects themselves (not detached views, which would go stale if a
        # parameter's .data were replaced); every update and copy runs under no_grad
        self._live = [tensor for _, tensor in self.entries]
        self.module_id = id(module)

    def reset(self, module: torch.nn.Module) -> None:
        """Forget the average; if ``module`` holds it (after an earlier fit), put its trained weights back."""
        if self.in_module and self.module_id == id(module):
            self.swap_out()
        self.entries, self._live, self.average, self.backup = [], [], None, None
        self.in_module = False

    @property
    def live(self) -> list[Tensor]:
        return self._live

    def start(self, device: torch.device | None) -> None:
        self.average = averaging_copy(self.live, device=device)

    def load_average(self, source: dict[str, Any], device: torch.device | None) -> None:
        """Average from a state dict (by name), float32 for floating tensors."""
        out = []
        for names, tensor in self.entries:
            value = source.get(names[0])
            if value is None:
                raise KeyError(f"The checkpoint's averaged weights lack {names[0]!r}; was it saved from another model?")
            target = tensor.device if device is None else device
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

    def buffer_positions(self) -> list[int]:
        """Indices of the averaged floating *buffers* (not parameters): the entries that differ across DDP ranks."""
        assert self.average is not None
        return [
            i
            for i, ((_, live), avg) in enumerate(zip(self.entries, self.average))
            if not isinstance(live, torch.nn.Parameter) and avg.is_floating_point()
        ]

    def synced_average(self) -> list[Tensor]:
        """The average with its floating buffers replaced by rank 0's (a collective: all ranks call it).

        Parameters are the same tensors (identical on every rank under DDP). Buffers are not: DDP
        treats rank 0's as the module's (``broadcast_buffers``; checkpoints hold rank 0's), so the
        average of rank 0's buffers is the one that matches the module, and the one a resumed run
        continues exactly. Without a process group this is the average itself."""
        assert self.average is not None
        if _distributed_world() < 2:
            return self.average
        positions = self.buffer_positions()
        if not positions:
            return self.average
        dist = torch.distributed
        device = self.entries[0][1].device  # the module's device: where the backend can reduce
        chosen = [self.average[i] for i in positions]
        flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float32) for t in chosen])
        dist.broadcast(flat, src=0)
        out = list(self.average)
        for i, value in zip(positions, flat.split([t.numel() for t in chosen])):
            out[i] = value.view_as(self.average[i]).to(device=self.average[i].device, dtype=self.average[i].dtype)
        return out

    def swap_in(self, tensors: list[Tensor] | None = None) -> None:
        """Put ``tensors`` (default: :meth:`synced_average`) into the module, keeping the trained weights
        (lossless for any dtype)."""
        synced = self.synced_average() if tensors is None else tensors
        live = self.live
        if self.backup is None:
            self.backup = [tensor.detach().clone() for tensor in live]
        else:
            copy_tensors_(self.backup, live)
        copy_tensors_(live, synced)
        self.in_module = True

    def swap_out(self) -> None:
        """Restore the trained weights into the module."""
        if self.in_module and self.backup is not None:
            copy_tensors_(self.live, self.backup)
        self.in_module = False
        self.backup = None


class _WeightAveraging(Callback, WeightOwner):
    """Base of ``EMA`` and ``SWA`` (see the module docstring). Subclasses implement
    :meth:`should_update` and :meth:`_average_into`, and may override :meth:`_evaluates_average`,
    :meth:`_copies_at_fit_start` and :meth:`_finish`."""

    def __init__(self, device: str | None = None, owns_final_weights: bool | None = None) -> None:
        super().__init__()
        if owns_final_weights not in (True, False, None):
            raise TypeError(f"owns_final_weights must be True, False or None, got {owns_final_weights!r}.")
        self.device = torch.device(device) if device is not None else None
        self.owns_final_weights = owns_final_weights
        self._weights = _AveragedWeights()
        self._owner = False  # settled at setup("fit")
        self._num_updates = 0
        self._last_step = 0  # global_step of the last optimizer step handled
        self._last_epoch = -1  # last epoch whose end was handled
        self._validation_swapped = False
        self._loaded_average: dict[str, Any] | None = None
        self._final: list[Tensor] | None = None  # the weights the end of fit produced (rank 0's, subclass changes)
        self._checkpoint_state_dict: dict[str, Any] | None = None

    # ------------------------------------------------------------------ what subclasses give
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to update the average after optimizer step ``step_idx`` (the number of optimizer steps
        taken, 1 after the first) or at the end of epoch ``epoch_idx`` (0-based); one of them is given."""
        raise NotImplementedError

    def _average_into(self, average: list[Tensor], live: list[Tensor], step_idx: int | None) -> None:
        """Fold the live weights into ``average`` in place (not called for the first update, which copies)."""
        raise NotImplementedError

    def _evaluates_average(self) -> bool:
        """Whether validation during fit runs on the average."""
        return False

    def _copies_at_fit_start(self, trainer: pl.Trainer) -> bool:
        """Whether the average starts as a copy of the weights at the start of a new fit (not an update)."""
        return False

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """End-of-fit work on ``self._final`` (the owner: with it in the module); never on the running average."""

    # ------------------------------------------------------------------ public read-only state
    @property
    def owns_weights(self) -> bool:
        """Whether this callback put (or will put) its average in the module at the end of the current fit."""
        return self._owner

    @property
    def averaged_tensors(self) -> list[Tensor] | None:
        """The float32 running average (module ``state_dict`` order, tied tensors once), or None before the start.

        Under DDP each rank's averaged buffers are its own (rank 0's are the ones the module and checkpoints
        get); :meth:`averaged_state_dict` gives the final weights after fit.
        """
        return self._weights.average

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The average as a state dict of the module (empty before the average started).

        After fit: the final averaged weights (rank 0's buffers under DDP, with what the subclass did at
        the end, e.g. SWA's recalibrated BatchNorm statistics), whether or not this callback owns the module's.
        """
        tensors = self._final if self._final is not None else self._weights.average
        if tensors is None:
            return {}
        return self._weights.state_dict_of(tensors, {})

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        name = type(self).__name__
        check_not_sharded(trainer, name)
        self._owner = resolve_weight_owner(trainer, self)
        # every fit starts a new average (a checkpoint restored next brings the old one back); a module
        # that holds the average of an earlier fit gets its trained weights back first
        self._weights.reset(pl_module)
        self._num_updates = 0
        self._last_step = 0
        self._last_epoch = -1
        self._validation_swapped = False
        self._loaded_average = None
        self._checkpoint_state_dict = None
        self._final = None
        if any(isinstance(cb, ModelCheckpoint) and cb.save_weights_only for cb in trainer.checkpoint_callbacks):
            evaluated = (
                "validation during fit uses the average, but validate/test(ckpt_path=...) of those files will "
                "evaluate the trained weights"
                if self._evaluates_average() and self._owner
                else "fit(ckpt_path=...) cannot continue the average from them"
            )
            rank_zero_warn(
                f"{name} with ModelCheckpoint(save_weights_only=True): Lightning calls no callback when it writes a "
                f"weights-only checkpoint, so those files hold the module's trained weights and not the {name} "
                f"average; {evaluated}. Use save_weights_only=False, or save the final model after fit with "
                "trainer.save_checkpoint(path, weights_only=True) (the module then holds the final weights)."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weights = self._weights
        weights.bind(pl_module)
        if self._loaded_average is not None:
            # every rank loads the file rank 0 wrote: rank 0's average, the one the module and checkpoints use
            weights.load_average(self._loaded_average, self.device)
            self._loaded_average = None
        elif weights.average is None and trainer.global_step == 0 and self._copies_at_fit_start(trainer):
            weights.start(self.device)
        self._checkpoint_state_dict = None

    # ------------------------------------------------------------------ updates
    def _update(self, step_idx: int | None) -> None:
        weights = self._weights
        if weights.average is None:
            weights.start(self.device)  # the first update copies (whatever the rule)
        else:
            self._average_into(weights.average, weights.live, step_idx)
        self._num_updates += 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step > self._last_step:  # a real optimizer step since the last call (gradient accumulation)
            self._last_step = step
            if self.should_update(step_idx=step):
                self._update(step)
        # the epoch's end: after its last optimizer step, before the epoch-end validation and checkpoint
        if is_last_training_batch(trainer, batch_idx):
            self._epoch_end(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer)  # epochs cut short (max_steps, a stop signal)

    def _epoch_end(self, trainer: pl.Trainer) -> None:
        epoch = trainer.current_epoch
        if epoch <= self._last_epoch:
            return
        self._last_epoch = epoch
        if self.should_update(epoch_idx=epoch):
            self._update(None)

    # ------------------------------------------------------------------ validation during fit
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.state.fn == TrainerFn.FITTING
            and self._evaluates_average()
            and self._weights.average is not None
            and self._num_updates > 0
            and not self._weights.in_module
        ):
            self._weights.swap_in()
            self._validation_swapped = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_swapped:
            self._weights.swap_out()
        self._validation_swapped = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_validation_epoch_end(trainer, pl_module)  # leave the trained weights in the module

    # ------------------------------------------------------------------ end of fit
    def _never_updated_message(self, trainer: pl.Trainer) -> str:
        return f"{type(self).__name__} was never updated during fit; the module keeps its trained weights."

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weights = self._weights
        if weights.average is None or self._num_updates == 0:
            rank_zero_warn(self._never_updated_message(trainer))
            return
        # the final weights: rank 0's buffers (a collective on every rank); the running average itself stays
        # as it is, so that a fit resumed from a checkpoint saved now continues it exactly
        self._final = [
            t if t is avg and isinstance(live, torch.nn.Parameter) else t.clone()
            for t, avg, (_, live) in zip(weights.synced_average(), weights.average, weights.entries)
        ]
        if self._owner and not weights.in_module:
            weights.swap_in(self._final)
        self._finish(trainer, pl_module)

    # ------------------------------------------------------------------ checkpoints
    def _average_in_state_dict(self) -> bool:
        """Whether ``checkpoint["state_dict"]`` gets this callback's average (else the callback state holds it)."""
        if not self._owner or self._weights.average is None or not self._weights.entries:
            return False
        if self._final is not None and self._weights.in_module:
            return True  # after fit: the module holds the final weights
        return self._evaluates_average() and self._num_updates > 0

    def _counters(self) -> dict[str, Any]:
        return {"num_updates": self._num_updates, "last_step": self._last_step, "last_epoch": self._last_epoch}

    def state_dict(self) -> dict[str, Any]:
        return self._counters()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._num_updates = int(state_dict.get("num_updates", self._num_updates))
        self._last_step = int(state_dict.get("last_step", self._last_step))
        self._last_epoch = int(state_dict.get("last_epoch", self._last_epoch))
        if state_dict.get("average") is not None:
            self._loaded_average = state_dict["average"]
        elif state_dict.get("average_in_state_dict", state_dict.get("started", False)):
            self._loaded_average = self._checkpoint_state_dict
        else:
            self._loaded_average = None  # the checkpoint's fit had not started an average

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        weights = self._weights
        if weights.average is None or not weights.entries:
            return
        # every rank runs this (trainer.save_checkpoint is called on all ranks), so collectives are safe
        state = checkpoint.setdefault("callbacks", {}).setdefault(self.state_key, self._counters())
        if self._average_in_state_dict():
            module_state = checkpoint["state_dict"]
            # while the module holds an average (after fit, or a save from inside validation) the backup holds
            # the trained weights
            raw = weights.backup if weights.in_module else weights.live
            evaluated = self._final if self._final is not None else weights.synced_average()
            assert raw is not None and evaluated is not None
            checkpoint["current_model_state"] = weights.state_dict_of(raw, module_state)
            checkpoint["state_dict"] = weights.state_dict_of(evaluated, module_state)
            # what Lightning's WeightAveraging/AveragedModel expects next to them
            checkpoint["averaging_state"] = {"n_averaged": torch.tensor(self._num_updates, dtype=torch.long)}
            state["average_in_state_dict"] = True
        else:
            # the running average (rank 0 writes the file: its buffers, which synced_average gives everywhere)
            state["average"] = weights.state_dict_of(weights.average, {})
            state["average_in_state_dict"] = False

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # validate/test/predict(ckpt_path=...): the module keeps checkpoint["state_dict"], the weights the
        # fit that wrote it evaluated; only a fit that resumes needs the trained weights and the average
        if trainer.state.fn != TrainerFn.FITTING or "current_model_state" not in checkpoint:
            return
        pl_module.load_state_dict(checkpoint["current_model_state"], strict=pl_module.strict_loading)
        self._checkpoint_state_dict = checkpoint["state_dict"]
        if "averaging_state" in checkpoint and self.state_key not in checkpoint.get("callbacks", {}):
            # a checkpoint of Lightning's WeightAveraging: its average is in state_dict
            self._loaded_average = checkpoint["state_dict"]
            n_averaged = checkpoint["averaging_state"].get("n_averaged")
            if n_averaged is not None:
                self._num_updates = int(n_averaged)
