"""TemperatureScaling: fit one temperature on validation logits after training, apply it at test and predict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_mix.callbacks.calibration_monitor import get_batch_entry, labels_of
from lightning_mix.metrics.functional import calibration_error
from lightning_mix.metrics.temperature import fit_temperature, temperature_nll

_APPLY_STAGES = ("test", "predict")


class TemperatureScaling(Callback):
    """Temperature scaling (Guo et al. 2017) as a callback: divide the logits by a fitted T > 0.

    When: at the end of ``fit`` (``on_train_end``, before the strategy's teardown moves the
    model to the CPU) it runs the module in eval mode over the validation data (``fit_on="val"``;
    all of it, whatever ``limit_val_batches`` says; gathered across DDP ranks), collects the logits of ``forward(batch[input_key])`` and fits T with
    :func:`lightning_mix.metrics.fit_temperature` (NLL over log T, L-BFGS then a bounded
    fallback; T = 1 when nothing improves the NLL). When a test or predict run starts with no
    fitted T (testing a checkpoint saved before the end of fit), it fits T first from the
    datamodule's ``val_dataloader()``.

    How it is applied: during ``test`` and ``predict`` (``apply_to``) the module's ``forward`` is
    wrapped so it returns ``forward(x) / T``; the wrapper is removed when the stage ends. So
    everything computed from ``self(x)`` in ``test_step``/``predict_step`` (the test NLL, the
    logits a :class:`CalibrationMonitor` reads, predicted probabilities) is temperature-scaled,
    and the argmax (accuracy) is unchanged. ``forward`` must return a logits tensor.

    Checkpoints: with ``fit_every_validation=True`` (default) T is also fitted, quietly, at the
    end of every validation epoch during fit, on that epoch's validation logits (those the step
    returns under ``logits_key``, else one extra forward), so each checkpoint that
    ``ModelCheckpoint`` writes carries the T of its own weights; the end-of-fit fit then replaces
    it for the final weights.

    What it reports: ``val/cal/temperature`` and the validation NLL and ECE (``n_bins`` bins)
    before and after scaling, sent to every logger at the end of fit and printed on rank zero;
    ``test/cal/temperature`` in test runs. T is saved with the callback's state in every
    checkpoint written after it was fitted (``trainer.save_checkpoint`` after fit), and restored
    from it.

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
        bad = [s for s in apply_to if s not in _APPLY_STAGES]
        if bad:
            raise ValueError(f"apply_to must be among {list(_APPLY_STAGES)}, got {bad}.")
        if not 0 < min_temperature < 1 < max_temperature:
            raise ValueError(f"need 0 < min_temperature < 1 < max_temperature, got {min_temperature}, {max_temperature}.")
        self.fit_on = fit_on
        self.max_iter = max_iter
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.apply_to = tuple(apply_to)
        self.n_bins = n_bins
        self.fit_every_validation = fit_every_validation
        self.logits_key = logits_key
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self.input_key = input_key
        self.target_key = target_key
        self.verbose = verbose
        self.temperature = 1.0
        self.fitted = False
        self.report: dict[str, float] = {}

    # ------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fitted": self.fitted, "report": dict(self.report)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.temperature = float(state_dict["temperature"])
        self.fitted = bool(state_dict["fitted"])
        self.report = dict(state_dict.get("report", {}))

    # ------------------------------------------------------------------------------- hooks

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the last hook of fit that runs before the strategy's teardown moves the model to the CPU
        if trainer.interrupted or trainer.sanity_checking:
            return
        loaders = trainer.val_dataloaders
        if loaders is None:
            rank_zero_warn("TemperatureScaling: the trainer has no validation data; keeping T = 1.")
            return
        self._fit(trainer, pl_module, loaders, gather=trainer.world_size > 1)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_logits, self._val_labels = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._fit_during_validation(trainer):
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
        if not self._fit_during_validation(trainer) or not self._val_logits:
            return
        logits, labels = torch.cat(self._val_logits), torch.cat(self._val_labels)
        self._val_logits, self._val_labels = [], []
        self._fit_tensors(trainer, logits, labels, gather=trainer.world_size > 1, announce=False)
        pl_module.log("val/cal/temperature", self.temperature, sync_dist=True)  # equal on all ranks

    def _fit_during_validation(self, trainer: pl.Trainer) -> bool:
        return self.fit_every_validation and trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test", trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("predict", trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap(pl_module)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unwrap(pl_module)  # never leave a scaled forward behind

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "test" in self.apply_to:
            pl_module.log("test/cal/temperature", float(self.temperature), sync_dist=True)

    # ------------------------------------------------------------------------------- work

    def _start(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage not in self.apply_to:
            return
        if not self.fitted:
            loaders = None
            datamodule = trainer.datamodule
            if datamodule is not None and hasattr(datamodule, "val_dataloader"):
                try:
                    loaders = datamodule.val_dataloader()
                except Exception as err:  # a datamodule whose val split is not set up for this stage
                    rank_zero_warn(f"TemperatureScaling: could not get validation data ({err}); keeping T = 1.")
            if loaders is None:
                rank_zero_warn("TemperatureScaling: no fitted temperature and no validation data; keeping T = 1.")
            else:
                self._fit(trainer, pl_module, loaders, gather=False)
        self._wrap(pl_module)

    def _wrap(self, pl_module: pl.LightningModule) -> None:
        self._unwrap(pl_module)
        original = pl_module.forward
        temperature = float(self.temperature)

        def temperature_scaled_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(*args, **kwargs)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    "TemperatureScaling divides the output of the module's forward by T, so forward must "
                    f"return a logits tensor; got {type(out).__name__}."
                )
            return out / temperature

        temperature_scaled_forward._temperature_scaling = True  # type: ignore[attr-defined]
        pl_module.forward = temperature_scaled_forward  # instance attribute shadows the class method

    @staticmethod
    def _unwrap(pl_module: pl.LightningModule) -> None:
        current = pl_module.__dict__.get("forward")
        if current is not None and getattr(current, "_temperature_scaling", False):
            del pl_module.__dict__["forward"]

    @torch.no_grad()
    def _collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loaders: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        was_training = pl_module.training
        pl_module.eval()
        logits, labels = [], []
        try:
            for index, loader in enumerate(loaders):
                for batch in loader:
                    batch = trainer.strategy.batch_to_device(batch, pl_module.device, dataloader_idx=index)
                    inputs = get_batch_entry(batch, self.input_key, "TemperatureScaling", "input")
                    with trainer.precision_plugin.forward_context():
                        out = pl_module(inputs)
                    if not isinstance(out, torch.Tensor):
                        raise TypeError(
                            f"TemperatureScaling needs forward to return logits, got {type(out).__name__}."
                        )
                    logits.append(out.float())
                    labels.append(labels_of(get_batch_entry(batch, self.target_key, "TemperatureScaling", "target")))
        finally:
            pl_module.train(was_training)
        if not logits:
            raise RuntimeError("TemperatureScaling: the validation data is empty; cannot fit a temperature.")
        return torch.cat(logits), torch.cat(labels).to(logits[0].device)

    def _fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loaders: Any, gather: bool) -> None:
        self._unwrap(pl_module)
        logits, labels = self._collect(trainer, pl_module, loaders)
        self._fit_tensors(trainer, logits, labels, gather, announce=True)

    def _fit_tensors(
        self, trainer: pl.Trainer, logits: torch.Tensor, labels: torch.Tensor, gather: bool, announce: bool
    ) -> None:
        if gather:  # each rank holds its DistributedSampler shard: fit on all of them
            logits = trainer.strategy.all_gather(logits).reshape(-1, logits.shape[-1])
            labels = trainer.strategy.all_gather(labels).reshape(-1)
        temperature = fit_temperature(
            logits, labels, self.max_iter, self.min_temperature, self.max_temperature
        )
        temperature = float(trainer.strategy.broadcast(temperature, src=0))
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
                f"TemperatureScaling: T = {temperature:.4f} fitted on {int(r['samples'])} validation samples; "
                f"NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, "
                f"ECE ({self.n_bins} bins) {100 * r['ece_before']:.2f}% -> {100 * r['ece_after']:.2f}%"
            )
