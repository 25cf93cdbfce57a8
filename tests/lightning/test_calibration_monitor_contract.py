"""CalibrationMonitor with several validation dataloaders (per-loader metrics) and input="probs" (issue 10)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import CalibrationMonitor
from lightning_mix.metrics import calibration_error, negative_log_likelihood


def _tensors(seed, n=96, d=8, c=3):
    w = torch.randn(d, c, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.multinomial((x @ w).softmax(-1), 1, generator=g).squeeze(1)
    return x, y


class Tiny(pl.LightningModule):
    def __init__(self, returns_probs=False):
        super().__init__()
        self.net = torch.nn.Linear(8, 3)
        self.returns_probs = returns_probs

    def forward(self, x):
        logits = self.net(x) * 2
        return logits.softmax(-1) if self.returns_probs else logits

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        return F.nll_loss(out.log(), y) if self.returns_probs else F.cross_entropy(out, y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self.net(x) * 2, y))  # Lightning adds /dataloader_idx_N itself

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, monitor, logger=False):
    options = {"accelerator": "auto", "devices": "auto", "limit_train_batches": 2}
    return tiny_trainer(logger=logger, callbacks=[monitor], default_root_dir=tmp_path, **options)


def test_several_validation_loaders_get_their_own_metrics(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    loaders = [DataLoader(TensorDataset(*_tensors(seed)), batch_size=32) for seed in (1, 2)]
    ood_x, ood_y = _tensors(3)
    loaders.append(DataLoader(TensorDataset(ood_x * 4, ood_y.flip(0)), batch_size=32))  # shifted, wrong labels
    logger = CSVLogger(tmp_path, name="run")
    monitor = CalibrationMonitor(metrics=["ece", "nll"], plot=True)
    trainer = _trainer(tmp_path, monitor, logger)
    trainer.fit(model, DataLoader(TensorDataset(*_tensors(0)), batch_size=32), loaders)
    logged = trainer.callback_metrics
    assert "val/cal/ece" not in logged  # never one pooled value over all loaders
    model.eval()
    for index, loader in enumerate(loaders):
        x, y = loader.dataset.tensors
        with torch.no_grad():
            logits = model(x)
        assert float(logged[f"val/cal/ece/dataloader_idx_{index}"]) == pytest.approx(
            float(calibration_error(logits, y)), abs=1e-6
        )
        assert float(logged[f"val/cal/nll/dataloader_idx_{index}"]) == pytest.approx(
            float(negative_log_likelihood(logits, y)), rel=1e-5
        )
        assert f"val/loss/dataloader_idx_{index}" in logged  # the module's own metrics use the same naming
    pngs = sorted(p.name for p in (Path(logger.log_dir) / "reliability_diagrams").glob("*.png"))
    assert [p.split("_epoch")[0] for p in pngs] == [f"val_dataloader_idx_{i}" for i in range(3)]


def test_one_validation_loader_keeps_plain_names(tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, CalibrationMonitor(metrics=["ece"], plot=False))
    loader = DataLoader(TensorDataset(*_tensors(1)), batch_size=32)
    trainer.fit(Tiny(), DataLoader(TensorDataset(*_tensors(0)), batch_size=32), loader)
    assert {k for k in trainer.callback_metrics if "/cal/" in k} == {"val/cal/ece"}


def test_input_probs_for_a_model_that_returns_probabilities(tmp_path):
    torch.manual_seed(0)
    model = Tiny(returns_probs=True)
    x, y = _tensors(1)
    monitor = CalibrationMonitor(metrics=["ece", "nll", "brier", "smece"], plot=False, input="probs")
    trainer = _trainer(tmp_path, monitor)
    trainer.fit(
        model, DataLoader(TensorDataset(*_tensors(0)), batch_size=32), DataLoader(TensorDataset(x, y), batch_size=32)
    )
    model.eval()
    with torch.no_grad():
        logits = model.net(x) * 2
    got = trainer.callback_metrics
    # the same numbers as the logits of the same model
    assert float(got["val/cal/ece"]) == pytest.approx(float(calibration_error(logits, y)), abs=1e-6)
    assert float(got["val/cal/nll"]) == pytest.approx(float(negative_log_likelihood(logits, y)), rel=1e-5)
    # reading the probabilities as logits (the old behaviour) gives another, wrong value
    assert abs(float(got["val/cal/ece"]) - float(calibration_error(logits.softmax(-1), y))) > 1e-3


def test_bad_input_argument():
    with pytest.raises(ValueError, match="input must be one of"):
        CalibrationMonitor(input="softmax")


@pytest.mark.parametrize("preset", ["calibration_monitor.yaml", "temperature_scaling.yaml"])
def test_presets_build_their_callback_with_every_listed_argument(preset):
    import importlib

    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "callbacks" / preset).read_text())
    (entry,) = config["trainer"]["callbacks+"]
    module, name = entry["class_path"].rsplit(".", 1)
    callback = getattr(importlib.import_module(module), name)(**entry["init_args"])
    for key, value in entry["init_args"].items():
        attribute = {"metrics": "metric_names"}.get(key, key)
        got = getattr(callback, attribute)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_non_finite_outputs_are_a_clear_error_naming_the_loader(tmp_path):
    class Diverged(Tiny):
        def forward(self, x):
            return super().forward(x) * float("nan")

    trainer = _trainer(tmp_path, CalibrationMonitor(metrics=["ece"], plot=False))
    loaders = [DataLoader(TensorDataset(*_tensors(seed)), batch_size=32) for seed in (1, 2)]
    with pytest.raises(ValueError, match=r"CalibrationMonitor \(validate, dataloader 0\): preds hold non-finite"):
        trainer.validate(Diverged(), loaders, verbose=False)
