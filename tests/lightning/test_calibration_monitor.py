"""CalibrationMonitor through a Trainer with the CSV and TensorBoard loggers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tiny_trainer import tiny_trainer

from lightning_mix.callbacks.calibration_monitor import (
    AVAILABLE_METRICS,
    DEFAULT_METRICS,
    CalibrationMonitor,
    _build_metric,
)
from lightning_mix.demos import MNIST5kDataModule, SmallCNN


def _trainer(tmp_path, loggers, monitor):
    limits = {"limit_train_batches": 2, "limit_val_batches": 2, "limit_test_batches": 3}
    options = {"accelerator": "auto", "devices": "auto", "num_sanity_val_steps": 1, **limits}
    return tiny_trainer(logger=loggers, callbacks=[monitor], default_root_dir=tmp_path, **options)


@torch.no_grad()
def _expected(model, loader, batches, names):
    model.eval()
    logits, labels = [], []
    for _, batch in zip(range(batches), loader):
        logits.append(model(batch[0]))
        labels.append(batch[1])
    logits, labels = torch.cat(logits), torch.cat(labels)
    out = {}
    for name in names:
        metric = _build_metric(name, 15, 10)
        metric.update(logits, labels)
        out[name] = float(metric.compute())
    return out


@pytest.mark.slow
def test_logs_every_metric_and_writes_the_figure(tmp_path):
    torch.manual_seed(0)
    data = MNIST5kDataModule(batch_size=32)
    model = SmallCNN(width=4)
    csv_logger = CSVLogger(tmp_path / "csv", name="run")
    tb_logger = TensorBoardLogger(tmp_path / "tb", name="run")
    monitor = CalibrationMonitor(metrics=list(AVAILABLE_METRICS))
    trainer = _trainer(tmp_path, [csv_logger, tb_logger], monitor)
    trainer.fit(model, datamodule=data)
    results = trainer.test(model, datamodule=data, verbose=False)[0]

    expected = _expected(model, data.test_dataloader(), 3, AVAILABLE_METRICS)
    for name in AVAILABLE_METRICS:
        assert results[f"test/cal/{name}"] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    assert results["test/cal/nll"] == pytest.approx(results["test/nll"], rel=1e-5)

    # CSV: every metric for both stages; the sanity check logged nothing (its epoch is -1 / step 0 only)
    rows = list(csv.DictReader(open(Path(csv_logger.log_dir) / "metrics.csv")))
    logged = {k for row in rows for k, v in row.items() if v}
    for name in AVAILABLE_METRICS:
        assert f"val/cal/{name}" in logged and f"test/cal/{name}" in logged
    assert sum(1 for row in rows if row.get("val/cal/ece")) == 1
    # the CSV logger has no image support: PNGs under its log dir
    pngs = sorted(p.name for p in (Path(csv_logger.log_dir) / "reliability_diagrams").glob("*.png"))
    assert [p.split("_")[0] for p in pngs] == ["test", "val"]
    # TensorBoard got the figures through add_figure
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb_logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    images = events.Tags()["images"]
    assert "val/cal/reliability_diagram" in images and "test/cal/reliability_diagram" in images
    assert "test/cal/ece" in events.Tags()["scalars"]


@pytest.mark.slow
def test_extra_forward_default_metrics_no_logger_dense_targets(tmp_path):
    """test_step returns only the loss (the monitor runs the forward itself), targets are dense
    (their argmax is the label), no logger (metrics still logged, no file written)."""

    class DenseTargets(SmallCNN):
        def test_step(self, batch, batch_idx):
            batch[1] = torch.nn.functional.one_hot(batch[1], 10).float()
            return self._evaluate(batch, "test")["loss"]

    torch.manual_seed(0)
    data = MNIST5kDataModule(batch_size=32)
    model = DenseTargets(width=4)
    trainer = _trainer(tmp_path, False, CalibrationMonitor(stages=["test"]))
    results = trainer.test(model, datamodule=data, verbose=False)[0]
    expected = _expected(model, data.test_dataloader(), 3, DEFAULT_METRICS)
    assert {k for k in results if k.startswith("test/cal/")} == {f"test/cal/{n}" for n in DEFAULT_METRICS}
    for name in DEFAULT_METRICS:
        assert results[f"test/cal/{name}"] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    assert not list(Path(tmp_path).rglob("*.png"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown calibration metric"):
        CalibrationMonitor(metrics=["ece", "accuracy"])
    with pytest.raises(ValueError, match="stages"):
        CalibrationMonitor(stages=["train"])


def test_figure_goes_to_log_image_where_a_logger_has_it(tmp_path):
    from types import SimpleNamespace

    from lightning_mix.metrics import reliability_diagram

    class ImageLogger:
        def __init__(self):
            self.calls = []

        def log_image(self, key, images, step=None):
            self.calls.append((key, images, step))

    logger = ImageLogger()
    trainer = SimpleNamespace(
        loggers=[logger], global_step=7, current_epoch=1, log_dir=str(tmp_path), default_root_dir=str(tmp_path)
    )
    g = torch.Generator().manual_seed(0)
    diagram = reliability_diagram(torch.randn(200, 10, generator=g), torch.randint(0, 10, (200,), generator=g))
    CalibrationMonitor()._log_figure(trainer, "val", diagram)
    ((key, images, step),) = logger.calls
    assert key == "val/cal/reliability_diagram" and step == 7
    assert images[0].ndim == 3 and images[0].shape[2] == 3 and images[0].dtype.name == "uint8"
    assert not list(Path(tmp_path).rglob("*.png"))  # no PNG when the logger took the image
