"""TemperatureScaling: fit one temperature on validation logits at the end of fit, apply it at test and predict."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.hooks import RemovableHandle

from lightning_mix.callbacks.calibration_monitor import get_batch_entry, labels_of
from lightning_mix.metrics.functional import calibration_error
from lightning_mix.metrics.temperature import fit_temperature, temperature_nll

__all__ = ["TemperatureScaling"]

_APPLY_STAGES = ("test", "predict")


class TemperatureScaling(Callback):
    """Temperature scaling (Guo et al. 2017) as a callback: divide the logits by a fitted T > 0.

    When: in ``on_fit_end``, which Lightning calls after every callback's ``on_train_end``, so T is
    fitted on the module's final weights, whatever callback (``EMA``, ``SWA``, ``ModelSoup``) put
    them there and whatever the order of the callbacks list. It runs the module in eval mode over
    one validation dataloader (``dataloader_idx``, default 0: with several validation loaders, an
    out-of-distribution one is never pooled in; all of its batches, whatever
    ``limit_val_batches`` says; gathered across DDP ranks) and fits T with
    :func:`lightning_mix.metrics.fit_temperature` (NLL over log T, L-BFGS then a bounded fallback;
    T = 1 when nothing improves the NLL). The batches take the path of Lightning's own loops through
    public API only: the precision plugin's ``convert_input``, ``on_before_batch_transfer``
    (the datamodule's if it overrides it, as Lightning does), ``transfer_batch_to_device`` and
    ``on_after_batch_transfer`` (``strategy.batch_to_device``), then ``forward`` under the
    precision plugin's ``forward_context()`` (``bf16-true`` and mixed precision work). The
    strategy's teardown has moved the module to the CPU by then; it goes to the strategy's root
    device for the fit and back. When a test or predict run starts with no fitted T (testing a
    checkpoint saved before the end of fit), T is fitted first from the datamodule's
    ``val_dataloader()`` (same loader choice).

    How it is applied: during ``test`` and ``predict`` (``apply_to``) a forward hook on the module
    returns ``output / T``; it is removed by its handle when the stage ends (or fails). So
    everything computed from ``self(x)`` in ``test_step``/``predict_step`` (the test NLL, the logits
    a :class:`CalibrationMonitor` reads, predicted probabilities) is temperature-scaled, and the
    argmax (accuracy) is unchanged. ``forward`` must return a logits tensor (not probabilities);
    a direct ``self.forward(x)`` call bypasses hooks and is not scaled.

    Checkpoints: with ``fit_every_validation=True`` (default) T is also fitted, quietly, at the
    end of every validation epoch during fit, on that epoch's logits of loader ``dataloader_idx``
    (those the step returns under ``logits_key``, else one extra forward), so each checkpoint that
    ``ModelCheckpoint`` writes carries the T of the weights it was validated with; the end-of-fit
    fit then replaces it for the final weights. T is saved with the callback's state and restored
    from it, so testing a checkpoint applies the T fitted on its weights.

    Non-finite logits (a diverged model): the end-of-fit fit raises a ``ValueError`` naming the
    problem (never "T = 1, NLL nan" marked fitted); a validation epoch with non-finite logits
    warns and leaves the callback unfitted (``fitted=False``), so that epoch's checkpoint carries no
    temperature.

    What it reports: ``val/cal/temperature`` and the validation NLL and ECE (``n_bins`` bins)
    before and after scaling, sent to every logger at the end of fit and printed on rank zero;
    ``test/cal/temperature`` in test runs.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import CalibrationMonitor, TemperatureScaling
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        data = MNIST5kDataModule(label_noise=0.3)
        trainer = Trainer(max_epochs=3, callbacks=[CalibrationMonitor(), TemperatureScaling()])
        trainer.fit(SmallCNN(), datamodule=data)  # prints T, NLL and ECE before/after
        trainer.test(datamodule=data)             # test/cal/* measured on logits / T
    """

    def __init__(
        self,
        fit_on: str = "val",
        dataloader_idx: int = 0,
        max_iter: int = 100,
        min_temperature: float = 0.05,
        max_temperature: float = 20.0,
        apply_to: list[str] | tuple[str, ...] = ("test", "predict"),
        n_bins: int = 15,
        fit_every_validation: bool = True,
        logits_key: str = "logits",
        input_key: int | str = 0,
        target_key: int | str = 1,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if fit_on != "val":
            raise ValueError(
                f"fit_on must be 'val' (temperature scaling is fitted on held-out validation data), got {fit_on!r}."
            )
        if not isinstance(dataloader_idx, int) or isinstance(dataloader_idx, bool) or dataloader_idx < 0:
            raise ValueError(f"dataloader_idx must be a non-negative integer, got {dataloader_idx!r}.")
        bad = [s for s in apply_to if s not in _APPLY_STAGES]
        if bad:
            raise ValueError(f"apply_to must be among {list(_APPLY_STAGES)}, got {bad}.")
        if not 0 < min_temperature < 1 < max_temperature:
            raise ValueError(
                f"need 0 < min_temperature < 1 < max_temperature, got {min_temperature}, {max_temperature}."
            )
        self.fit_on = fit_on
        self.dataloader_idx = dataloader_idx
        self.max_iter = max_iter
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.apply_to = tuple(apply_to)
        self.n_bins = n_bins
        self.fit_every_validation = fit_every_validation
        self.logits_key = logits_key
        self.input_key = input_key
        self.target_key = target_key
        self.verbose = verbose
        self.temperature = 1.0
        self.fitted = False
        self.report: dict[str, float] = {}
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._hook: RemovableHandle | None = None

    # ------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fitted": self.fitted, "report": dict(self.report)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.temperature = float(state_dict["temperature"])
        self.fitted = bool(state_dict["fitted"])
        self.report = dict(state_dict.get("report", {}))

    # ------------------------------------------------------------------------------- fit

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after every callback's on_train_end: the weight owners (EMA, SWA, ModelSoup) have settled the weights
        if trainer.interrupted:
            return
        loaders = trainer.val_dataloaders
        if loaders is None:
            rank_zero_warn("TemperatureScaling: the trainer has no validation data; keeping T = 1.")
            return
        loader = self._choose(loaders)
        home = pl_module.device
        pl_module.to(trainer.strategy.root_device)  # the strategy's teardown moved it to the CPU
        try:
            self._fit(trainer, pl_module, loader, gather=trainer.world_size > 1)
        finally:
            pl_module.to(home)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_logits, self._val_labels = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._fit_during_validation(trainer) or dataloader_idx != self.dataloader_idx:
            return
        if isinstance(outputs, Mapping) and self.logits_key in outputs:
            logits = outputs[self.logits_key]
        else:
            with torch.no_grad():
                logits = pl_module(get_batch_entry(batch, self.input_key, "TemperatureScaling", "input"))
        self._val_logits.append(logits.detach().float())
        labels = labels_of(get_batch_entry(batch, self.target_key, "TemperatureScaling", "target"))
        self._val_labels.append(labels.to(logits.device))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._fit_during_validation(trainer):
            return
        self._check_index(len(trainer.num_val_batches))
        if not self._val_logits:
            return
        logits, labels = torch.cat(self._val_logits), torch.cat(self._val_labels)
        self._val_logits, self._val_labels = [], []
        try:
            self._fit_tensors(trainer, logits, labels, gather=trainer.world_size > 1, announce=False)
        except ValueError as err:
            if "non-finite" not in str(err):
                raise
            self.temperature, self.fitted, self.report = 1.0, False, {}
            rank_zero_warn(f"TemperatureScaling: no temperature for this validation epoch: {err}")
            return
        pl_module.log("val/cal/temperature", self.temperature, sync_dist=True)  # equal on all ranks

    def _fit_during_validation(self, trainer: pl.Trainer) -> bool:
        return self.fit_every_validation and trainer.state.fn == "fit" and not trainer.sanity_checking

    # ------------------------------------------------------------------------------- apply

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test", trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("predict", trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hook()  # never leave a scaled forward behind

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "test" in self.apply_to:
            pl_module.log("test/cal/temperature", float(self.temperature), sync_dist=True)

    def _start(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage not in self.apply_to:
            return
        if not self.fitted:
            loaders = None
            datamodule = trainer.datamodule
            if datamodule is not None and hasattr(datamodule, "val_dataloader"):
                try:
                    loaders = datamodule.val_dataloader()
                except Exception as err:  # noqa: BLE001 - any datamodule error: its val split is not set up here
                    rank_zero_warn(f"TemperatureScaling: could not get validation data ({err}); keeping T = 1.")
            if loaders is None:
                rank_zero_warn("TemperatureScaling: no fitted temperature and no validation data; keeping T = 1.")
            else:
                self._fit(trainer, pl_module, self._choose(loaders), gather=False)
        self._add_hook(pl_module)

    def _add_hook(self, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        temperature = float(self.temperature)

        def divide_by_temperature(module: torch.nn.Module, args: Any, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    "TemperatureScaling divides the output of the module's forward by T, so forward must "
                    f"return a logits tensor; got {type(output).__name__}."
                )
            return output / temperature

        self._hook = pl_module.register_forward_hook(divide_by_temperature)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ------------------------------------------------------------------------------- work

    def _check_index(self, num_loaders: int) -> None:
        if self.dataloader_idx >= num_loaders:
            raise ValueError(
                f"TemperatureScaling(dataloader_idx={self.dataloader_idx}) but there are {num_loaders} validation "
                f"dataloader(s); choose an index below {num_loaders}."
            )

    def _choose(self, loaders: Any) -> Any:
        """The validation loader to fit on (one loader, or item ``dataloader_idx`` of a list/tuple/dict)."""
        if isinstance(loaders, Mapping):
            loaders = list(loaders.values())
        if not isinstance(loaders, (list, tuple)):
            loaders = [loaders]
        self._check_index(len(loaders))
        return loaders[self.dataloader_idx]

    def _before_batch_transfer(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> Any:
        # Lightning's rule: the datamodule's hook when it overrides it, else the module's
        datamodule = trainer.datamodule
        if datamodule is not None and is_overridden("on_before_batch_transfer", datamodule):
            return datamodule.on_before_batch_transfer(batch, self.dataloader_idx)
        return pl_module.on_before_batch_transfer(batch, self.dataloader_idx)

    @torch.no_grad()
    def _collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = pl_module.training
        pl_module.eval()
        precision = trainer.precision_plugin
        logits, labels = [], []
        try:
            for batch in loader:
                # the evaluation loop's path, through public API only
                batch = precision.convert_input(batch)
                batch = self._before_batch_transfer(trainer, pl_module, batch)
                batch = trainer.strategy.batch_to_device(batch, pl_module.device, dataloader_idx=self.dataloader_idx)
                inputs = get_batch_entry(batch, self.input_key, "TemperatureScaling", "input")
                with precision.forward_context():
                    out = pl_module(inputs)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"TemperatureScaling needs forward to return logits, got {type(out).__name__}.")
                logits.append(out.float())
                labels.append(labels_of(get_batch_entry(batch, self.target_key, "TemperatureScaling", "target")))
        finally:
            pl_module.train(was_training)
        if not logits:
            raise RuntimeError("TemperatureScaling: the validation data is empty; cannot fit a temperature.")
        return torch.cat(logits), torch.cat(labels).to(logits[0].device)

    def _fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any, gather: bool) -> None:
        self._remove_hook()
        logits, labels = self._collect(trainer, pl_module, loader)
        self._fit_tensors(trainer, logits, labels, gather, announce=True)

    def _fit_tensors(
        self, trainer: pl.Trainer, logits: torch.Tensor, labels: torch.Tensor, gather: bool, announce: bool
    ) -> None:
        if gather:  # each rank holds its DistributedSampler shard: fit on all of them
            logits = trainer.strategy.all_gather(logits).reshape(-1, logits.shape[-1])
            labels = trainer.strategy.all_gather(labels).reshape(-1)
        try:
            temperature = fit_temperature(logits, labels, self.max_iter, self.min_temperature, self.max_temperature)
        except ValueError as err:
            raise ValueError(
                f"TemperatureScaling: cannot fit a temperature on validation dataloader {self.dataloader_idx}: {err}"
            ) from err
        temperature = float(trainer.strategy.broadcast(temperature, src=0))
        if not math.isfinite(temperature) or temperature <= 0:  # fit_temperature never returns these
            raise RuntimeError(f"TemperatureScaling: fitted an invalid temperature {temperature}.")
        self.temperature = temperature
        self.fitted = True
        self.report = {
            "temperature": temperature,
            "nll_before": temperature_nll(logits, labels, 1.0),
            "nll_after": temperature_nll(logits, labels, temperature),
            "ece_before": float(calibration_error(logits, labels, self.n_bins)),
            "ece_after": float(calibration_error(logits / temperature, labels, self.n_bins)),
            "samples": float(labels.numel()),
        }
        if not announce:
            return
        metrics = {
            "val/cal/temperature": temperature,
            "val/cal/nll_before_scaling": self.report["nll_before"],
            "val/cal/nll_after_scaling": self.report["nll_after"],
            "val/cal/ece_before_scaling": self.report["ece_before"],
            "val/cal/ece_after_scaling": self.report["ece_after"],
        }
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()
        if self.verbose:
            r = self.report
            rank_zero_info(
                f"TemperatureScaling: T = {temperature:.4f} fitted on {int(r['samples'])} validation samples "
                f"(dataloader {self.dataloader_idx}); NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, "
                f"ECE ({self.n_bins} bins) {100 * r['ece_before']:.2f}% -> {100 * r['ece_after']:.2f}%"
            )
