"""CalibrationMonitor: calibration metrics and a reliability diagram for validation and test epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import Metric

from lightning_mix.checkpoint_io import atomic_write_path
from lightning_mix.evaluation import BootstrapResult, bootstrap_ci
from lightning_mix.metrics import (
    BrierScore,
    CalibrationError,
    NegativeLogLikelihood,
    OverconfidenceError,
    ReliabilityDiagram,
    SmoothECE,
    UnderconfidenceError,
)
from lightning_mix.metrics.plot import require_matplotlib

__all__ = [
    "AVAILABLE_METRICS",
    "DEFAULT_METRICS",
    "CalibrationMonitor",
    "figure_to_rgb",
    "get_batch_entry",
    "labels_of",
]

DEFAULT_METRICS = (
    "ece",
    "adaece",
    "mce",
    "rmsce",
    "classwise_ece",
    "smece",
    "overconfidence",
    "underconfidence",
    "brier",
    "nll",
)
_STAGE_PREFIX = {"validate": "val", "test": "test"}


_INPUTS = ("logits", "probs")


def _build_metric(name: str, n_bins: int, num_classes: int, input: str = "logits") -> Metric:
    builders = {
        "ece": lambda: CalibrationError(n_bins, "l1", input=input),
        "adaece": lambda: CalibrationError(n_bins, "l1", binning="quantile", input=input),
        "mce": lambda: CalibrationError(n_bins, "max", input=input),
        "rmsce": lambda: CalibrationError(n_bins, "l2", input=input),
        "debiased_rmsce": lambda: CalibrationError(n_bins, "l2", debias=True, input=input),
        "classwise_ece": lambda: CalibrationError(n_bins, "l1", kind="classwise", num_classes=num_classes, input=input),
        "marginal_rmsce": lambda: CalibrationError(
            n_bins, "l2", kind="marginal", debias=True, binning="quantile", num_classes=num_classes, input=input
        ),
        "smece": lambda: SmoothECE(input=input),
        "overconfidence": lambda: OverconfidenceError(n_bins, input=input),
        "underconfidence": lambda: UnderconfidenceError(n_bins, input=input),
        "brier": lambda: BrierScore(input=input),
        "nll": lambda: NegativeLogLikelihood(input=input),
    }
    return builders[name]()


AVAILABLE_METRICS = (
    "ece",
    "adaece",
    "mce",
    "rmsce",
    "debiased_rmsce",
    "classwise_ece",
    "marginal_rmsce",
    "smece",
    "overconfidence",
    "underconfidence",
    "brier",
    "nll",
)


def get_batch_entry(batch: Any, key: int | str, owner: str, role: str) -> torch.Tensor:
    """``batch[key]`` (list, tuple or dict batch) with an error that names the valid keys."""
    try:
        value = batch[key]
    except (KeyError, IndexError, TypeError):
        if isinstance(batch, Mapping):
            valid: Any = list(batch.keys())
        elif isinstance(batch, Sequence):
            valid = list(range(len(batch)))
        else:
            valid = f"none (the batch is a {type(batch).__name__})"
        raise KeyError(
            f"{owner}: the batch has no entry {key!r} for the {role}; valid keys are {valid}. Set {role}_key."
        ) from None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{owner}: batch[{key!r}] ({role}) must be a tensor, got {type(value).__name__}.")
    return value


def labels_of(targets: torch.Tensor) -> torch.Tensor:
    """Class labels from (B,) labels or dense (B, C) targets (their largest weight)."""
    if targets.is_floating_point() and targets.dim() == 2:
        return targets.argmax(-1)
    return targets.long()


def _gather_rows(pl_module: pl.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """All ranks' ``rows`` concatenated in rank order (shards of different lengths are padded for the gather)."""
    if pl_module.trainer.world_size == 1:
        return rows
    sizes = pl_module.all_gather(torch.tensor(rows.shape[0], device=rows.device)).reshape(-1).tolist()
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = pl_module.all_gather(padded)  # (world_size, max_rows, ...)
    return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])


def figure_to_rgb(fig: Any):
    """(H, W, 3) uint8 numpy image of a matplotlib figure (for loggers' ``log_image``)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class CalibrationMonitor(Callback):
    """Log calibration metrics as ``{stage}/cal/{name}`` and a reliability diagram each validation/test epoch.

    Model outputs come from what ``validation_step``/``test_step`` return: a dict with ``logits_key``
    (``SmallCNN`` returns ``{"logits": ..., "loss": ...}``). When the step returns something else,
    the callback runs the module's forward on ``batch[input_key]`` itself (one extra forward
    pass per batch, under ``no_grad``). Labels are ``batch[target_key]`` (dense targets use
    their largest weight). ``input="logits"`` (default) reads them as logits; ``input="probs"``
    for a model whose forward returns probabilities (rows that sum to one; checked). Outputs are
    cast to float32; the metrics live on the module's device, keep constant-size state (per-bin
    sums) and synchronise under DDP before they are logged.

    Bad outputs (nan or inf: a diverged model; labels out of range; with ``input="probs"``, rows
    that do not sum to one) raise a ``ValueError`` naming the stage, the dataloader and the problem.

    Several validation (or test) dataloaders: each gets its own metrics, logged as
    ``{stage}/cal/{name}/dataloader_idx_{i}`` (Lightning's naming for the module's own metrics),
    and its own reliability diagram; with one dataloader the names carry no suffix.
    Stages: ``"validate"`` (validation during fit and ``trainer.validate``, prefix ``val``) and
    ``"test"`` (prefix ``test``); the sanity check is skipped.

    Metrics (``metrics``, names as logged): ``ece``, ``adaece`` (equal-mass bins), ``mce``,
    ``rmsce``, ``debiased_rmsce``, ``classwise_ece``, ``marginal_rmsce`` (debiased, equal-mass,
    Kumar et al.), ``smece``, ``overconfidence``, ``underconfidence``, ``brier``, ``nll``; all
    with ``n_bins`` bins where binned.

    Intervals on test (``intervals=True``): the callback also stores the test outputs and labels
    (``n * C * 4`` bytes of float32 outputs plus ``n * 8`` bytes of labels per test dataloader, on
    the module's device; under DDP every rank gathers all ranks' rows at the end of the epoch) and
    logs each metric's percentile bootstrap interval over test rows as ``test/cal/{name}_low`` and
    ``test/cal/{name}_high`` (:func:`~lightning_mix.evaluation.bootstrap_ci` with
    ``n_resamples``, ``confidence_level`` and ``bootstrap_seed``; each resample recomputes the
    metric with the same class as the logged value, so the cost is ``n_resamples`` metric
    computations per metric, ten times that for ``smece``, which searches its bandwidth on each
    resample). The results are kept in ``last_intervals`` (``{logged name: BootstrapResult}``).
    Under DDP, Lightning's ``DistributedSampler`` pads the ranks' shards to equal length by
    repeating a few rows; the logged metrics count them as well, and so do the intervals.

    The reliability diagram (``plot=True``, needs ``pip install lightning-mix[plot]``) goes to
    every logger: ``add_figure`` on TensorBoard, ``log_image`` where a logger has it, otherwise a
    PNG under ``trainer.log_dir/reliability_diagrams/``. With no logger at all nothing is written.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.loggers import CSVLogger
        from lightning_mix.callbacks import CalibrationMonitor
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        trainer = Trainer(max_epochs=3, logger=CSVLogger("logs"),
                          callbacks=[CalibrationMonitor(metrics=["ece", "smece", "nll"])])
        trainer.fit(SmallCNN(), datamodule=MNIST5kDataModule(label_noise=0.3))
        # logs val/cal/ece, val/cal/smece, val/cal/nll and logs/.../reliability_diagrams/*.png
    """

    def __init__(
        self,
        metrics: list[str] | None = None,
        logits_key: str = "logits",
        input_key: int | str = 0,
        target_key: int | str = 1,
        stages: list[str] | tuple[str, ...] = ("validate", "test"),
        plot: bool = True,
        n_bins: int = 15,
        num_classes: int | None = None,
        input: str = "logits",
        intervals: bool = False,
        n_resamples: int = 1000,
        confidence_level: float = 0.95,
        bootstrap_seed: int = 0,
    ) -> None:
        super().__init__()
        if intervals and "test" not in stages:
            raise ValueError(f"intervals=True reports intervals on test, but stages={list(stages)} leaves test out.")
        if n_resamples < 2 or not 0.0 < confidence_level < 1.0:
            raise ValueError(
                f"n_resamples must be at least 2 and confidence_level in (0, 1), got {n_resamples} and "
                f"{confidence_level}."
            )
        if input not in _INPUTS:
            raise ValueError(f"input must be one of {_INPUTS} (what forward returns), got {input!r}.")
        names = list(DEFAULT_METRICS if metrics is None else metrics)
        unknown = [n for n in names if n not in AVAILABLE_METRICS]
        if unknown:
            raise ValueError(f"unknown calibration metric(s) {unknown}; choose from {list(AVAILABLE_METRICS)}.")
        bad_stages = [s for s in stages if s not in _STAGE_PREFIX]
        if bad_stages:
            raise ValueError(f"stages must be among {list(_STAGE_PREFIX)}, got {bad_stages}.")
        if plot:
            require_matplotlib()
        self.metric_names = names
        self.logits_key = logits_key
        self.input_key = input_key
        self.target_key = target_key
        self.stages = tuple(stages)
        self.plot = plot
        self.n_bins = n_bins
        self.num_classes = num_classes
        self.input = input
        self.intervals = intervals
        self.n_resamples = n_resamples
        self.confidence_level = confidence_level
        self.bootstrap_seed = bootstrap_seed
        self.last_intervals: dict[str, BootstrapResult] = {}
        self._stored: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._metrics: dict[tuple[str, int], dict[str, Metric]] = {}
        self.last_figure_paths: list[Path] = []

    # ---------------------------------------------------------------------------------- hooks

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("validate", trainer, pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test", trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("validate", trainer, pl_module, outputs, batch, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("test", trainer, pl_module, outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish("validate", trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    # ---------------------------------------------------------------------------------- work

    def _active(self, stage: str, trainer: pl.Trainer) -> bool:
        return stage in self.stages and not trainer.sanity_checking

    @staticmethod
    def _num_loaders(stage: str, trainer: pl.Trainer) -> int:
        counts = trainer.num_val_batches if stage == "validate" else trainer.num_test_batches
        return max(1, len(counts))

    def _start(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for key in [key for key in self._metrics if key[0] == stage]:
            del self._metrics[key]
        if stage == "test":
            self._stored.clear()
            if self._active(stage, trainer) and self.intervals:
                self.last_intervals = {}
        if self._active(stage, trainer) and self.num_classes is not None:
            for index in range(self._num_loaders(stage, trainer)):
                self._create(stage, index, self.num_classes, pl_module.device)

    def _create(self, stage: str, index: int, num_classes: int, device: torch.device) -> dict[str, Metric]:
        metrics = {name: _build_metric(name, self.n_bins, num_classes, self.input) for name in self.metric_names}
        if self.plot:
            metrics["_diagram"] = ReliabilityDiagram(self.n_bins, input=self.input)
        for metric in metrics.values():
            metric.to(device)
        self._metrics[(stage, index)] = metrics
        return metrics

    def _logits(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> torch.Tensor:
        if isinstance(outputs, Mapping) and self.logits_key in outputs:
            logits = outputs[self.logits_key]
        else:
            inputs = get_batch_entry(batch, self.input_key, "CalibrationMonitor", "input")
            with torch.no_grad():
                logits = pl_module(inputs)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"CalibrationMonitor: the model's output must be a tensor, got {type(logits).__name__}.")
        return logits.detach().float()

    def _update(self, stage: str, trainer, pl_module, outputs: Any, batch: Any, dataloader_idx: int = 0) -> None:
        if not self._active(stage, trainer):
            return
        logits = self._logits(pl_module, outputs, batch)
        labels = labels_of(get_batch_entry(batch, self.target_key, "CalibrationMonitor", "target")).to(logits.device)
        metrics = self._metrics.get((stage, dataloader_idx))
        if metrics is None:
            num_classes = 2 if logits.dim() == 1 else logits.shape[-1]
            metrics = self._create(stage, dataloader_idx, num_classes, logits.device)
        try:
            for metric in metrics.values():
                metric.update(logits, labels)
        except ValueError as err:  # non-finite outputs, labels out of range, probabilities that do not sum to one
            raise ValueError(f"CalibrationMonitor ({stage}, dataloader {dataloader_idx}): {err}") from err
        if stage == "test" and self.intervals:
            outputs_list, labels_list = self._stored.setdefault(dataloader_idx, ([], []))
            outputs_list.append(logits)
            labels_list.append(labels)

    def _finish(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(stage, trainer):
            return
        several = self._num_loaders(stage, trainer) > 1
        prefix = _STAGE_PREFIX[stage]
        for key_stage, index in sorted(key for key in self._metrics if key[0] == stage):
            metrics = self._metrics.pop((key_stage, index))
            suffix = f"/dataloader_idx_{index}" if several else ""
            for name in self.metric_names:
                pl_module.log(
                    f"{prefix}/cal/{name}{suffix}", metrics[name].compute(), sync_dist=True, add_dataloader_idx=False
                )
            if self.plot:
                diagram = metrics["_diagram"].compute()  # every rank joins the sync
                if trainer.is_global_zero:
                    self._log_figure(trainer, prefix, diagram, suffix)
            if stage == "test" and self.intervals:
                self._log_intervals(pl_module, prefix, index, suffix)

    def _log_intervals(self, pl_module: pl.LightningModule, prefix: str, index: int, suffix: str) -> None:
        """Bootstrap each metric over the (gathered) stored test rows of dataloader ``index`` and log its bounds."""
        outputs_list, labels_list = self._stored.pop(index, ([], []))
        if not outputs_list:
            return
        outputs = _gather_rows(pl_module, torch.cat(outputs_list))
        labels = _gather_rows(pl_module, torch.cat(labels_list))
        num_classes = 2 if outputs.dim() == 1 else outputs.shape[-1]
        for name in self.metric_names:
            metric = _build_metric(name, self.n_bins, num_classes, self.input).to(outputs.device)
            metric.sync_on_compute = False  # every rank holds all rows already; each computes the same interval

            def statistic(o: torch.Tensor, t: torch.Tensor, metric: Metric = metric) -> torch.Tensor:
                metric.reset()
                metric.update(o, t)
                return metric.compute()

            result = bootstrap_ci(
                (outputs, labels),
                statistic,
                n_resamples=self.n_resamples,
                confidence_level=self.confidence_level,
                seed=self.bootstrap_seed,
                vectorized=False,
            )
            key = f"{prefix}/cal/{name}{suffix}"
            self.last_intervals[key] = result
            for bound in ("low", "high"):
                pl_module.log(
                    f"{prefix}/cal/{name}_{bound}{suffix}",
                    getattr(result, bound),
                    sync_dist=True,
                    add_dataloader_idx=False,
                )

    def _log_figure(self, trainer: pl.Trainer, prefix: str, diagram: dict[str, torch.Tensor], suffix: str = "") -> None:
        if not trainer.loggers:
            return
        from lightning_mix.metrics.plot import plot_reliability_diagram

        step, epoch = trainer.global_step, trainer.current_epoch
        tag = f"{prefix}/cal/reliability_diagram{suffix}"
        fig, _ = plot_reliability_diagram(diagram, title=f"{prefix}{suffix} reliability (epoch {epoch})")
        wrote_png = False
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, fig, global_step=step, close=False)
            elif hasattr(logger, "log_image"):
                logger.log_image(key=tag, images=[figure_to_rgb(fig)], step=step)
            elif not wrote_png:
                self._save_png(fig, trainer, prefix + suffix.replace("/", "_"), epoch, step)
                wrote_png = True

    def _save_png(self, fig: Any, trainer: pl.Trainer, prefix: str, epoch: int, step: int) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "reliability_diagrams"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{prefix}_epoch{epoch:03d}_step{step:07d}.png"
        with atomic_write_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        self.last_figure_paths.append(path)
