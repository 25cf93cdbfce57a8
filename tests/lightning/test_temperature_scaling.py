"""fit_temperature and the TemperatureScaling callback."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from tiny_trainer import tiny_trainer

from lightning_mix.callbacks.temperature_scaling import TemperatureScaling
from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.metrics import calibration_error, fit_temperature


def _calibrated(n=10000, c=10, seed=0):
    """Logits z with labels drawn from softmax(z): temperature 1 is right for z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_recovers_known_temperature(factor):
    z, y = _calibrated()
    t = fit_temperature(z * factor, y)
    assert t == pytest.approx(factor, rel=0.05)
    # the fitted T minimises the NLL: nearby temperatures are worse
    nll = lambda temp: float(F.cross_entropy(z * factor / temp, y))  # noqa: E731
    assert nll(t) <= min(nll(t * 1.02), nll(t / 1.02))


def test_dense_targets_give_the_same_temperature():
    z, y = _calibrated(n=2000)
    assert fit_temperature(z * 3, F.one_hot(y, 10).float()) == pytest.approx(fit_temperature(z * 3, y), rel=1e-6)


def test_temperature_always_positive_and_one_when_nothing_helps():
    z, y = _calibrated(n=2000)
    random_labels = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(1))
    t_random = fit_temperature(z, random_labels, max_temperature=20.0)
    assert 0 < t_random <= 20.0 and t_random > 5  # uninformative logits want a huge T, clipped to the bound
    separable = F.one_hot(y, 10).float() * 5  # always right: T shrinks to the lower bound, never <= 0
    t_sep = fit_temperature(separable, y, min_temperature=0.05)
    assert 0.05 <= t_sep < 0.5  # NLL underflows to 0 below T ~ 0.13 here
    assert fit_temperature(torch.zeros(100, 10), y[:100]) == 1.0  # constant logits: no T changes NLL


def test_fallback_when_lbfgs_fails(monkeypatch):
    z, y = _calibrated(n=5000)

    def broken(self, closure):
        raise RuntimeError("line search failed")

    monkeypatch.setattr(torch.optim.LBFGS, "step", broken)
    assert fit_temperature(z * 3, y) == pytest.approx(3.0, rel=0.05)


def test_scaling_keeps_accuracy_and_lowers_ece():
    z, y = _calibrated()
    logits = z * 3
    t = fit_temperature(logits, y)
    assert torch.equal((logits / t).argmax(-1), logits.argmax(-1))
    assert float(calibration_error(logits / t, y)) < 0.3 * float(calibration_error(logits, y))


def _trainer(tmp_path, callbacks, **kwargs):
    limits = {"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2}
    options = {"logger": None, "accelerator": "auto", "devices": "auto", **limits, **kwargs}
    return tiny_trainer(default_root_dir=tmp_path, callbacks=callbacks, **options)


@torch.no_grad()
def _test_logits(model, data):
    model.eval()
    loader = data.test_dataloader()
    batches = [b for _, b in zip(range(2), loader)]
    return torch.cat([model(b[0]) for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.slow
def test_callback_fits_logs_checkpoints_and_applies_at_test(tmp_path):
    torch.manual_seed(0)
    data = MNIST5kDataModule(batch_size=64, label_noise=0.3)
    model = SmallCNN(width=4)
    ts = TemperatureScaling()
    trainer = _trainer(tmp_path, [ts], logger=CSVLogger(tmp_path))
    trainer.fit(model, datamodule=data)
    assert ts.fitted and ts.temperature > 0 and ts.report["samples"] == 500  # all validation data
    # T equals fit_temperature on the validation logits of the final weights in eval mode
    model.eval()
    with torch.no_grad():
        val_x, val_y = data.val_set.tensors
        val_logits = model(val_x)
    assert ts.temperature == pytest.approx(fit_temperature(val_logits, val_y), rel=1e-6)
    assert ts.report["ece_before"] == pytest.approx(float(calibration_error(val_logits, val_y)), abs=1e-6)
    assert ts.report["nll_after"] <= ts.report["nll_before"]
    # logged before/after
    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {
        "val/cal/temperature",
        "val/cal/nll_before_scaling",
        "val/cal/nll_after_scaling",
        "val/cal/ece_before_scaling",
        "val/cal/ece_after_scaling",
    } <= logged
    # T in the checkpoint, restored by a fresh callback, applied to forward during test only
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    states = torch.load(ckpt, weights_only=False)["callbacks"]
    assert [s["temperature"] for s in states.values()] == [ts.temperature]
    raw_logits, labels = _test_logits(model, data)
    fresh = TemperatureScaling()
    plain = _trainer(tmp_path, [], logger=False).test(model, datamodule=data, verbose=False)[0]
    scaled = _trainer(tmp_path, [fresh], logger=False).test(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    assert fresh.temperature == ts.temperature
    assert scaled["test/cal/temperature"] == pytest.approx(ts.temperature)
    assert scaled["test/acc"] == plain["test/acc"]  # accuracy unchanged
    assert scaled["test/nll"] == pytest.approx(float(F.cross_entropy(raw_logits / ts.temperature, labels)), rel=1e-5)
    assert plain["test/nll"] == pytest.approx(float(F.cross_entropy(raw_logits, labels)), rel=1e-5)
    assert "forward" not in model.__dict__  # the wrapper is removed after the stage
    # predict: SmallCNN.predict_step returns softmax(self(x)), so it gets softmax(logits / T)
    predict = pl.Trainer(limit_predict_batches=2, logger=False, enable_progress_bar=False, callbacks=[fresh])
    probs = torch.cat(predict.predict(model, datamodule=data))
    assert torch.allclose(probs, (raw_logits / ts.temperature).softmax(-1), atol=1e-5)
    assert "forward" not in model.__dict__


@pytest.mark.slow
def test_testing_a_checkpoint_without_temperature_fits_one(tmp_path):
    torch.manual_seed(0)
    data = MNIST5kDataModule(batch_size=64)
    model = SmallCNN(width=4)
    ts = TemperatureScaling(verbose=False)
    trainer = _trainer(tmp_path, [ts], logger=False)
    trainer.test(model, datamodule=data, verbose=False)
    model.eval()
    with torch.no_grad():
        val_x, val_y = data.val_set.tensors
        expected = fit_temperature(model(val_x), val_y)
    assert ts.fitted and ts.temperature == pytest.approx(expected, rel=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="fit_on"):
        TemperatureScaling(fit_on="train")
    with pytest.raises(ValueError, match="apply_to"):
        TemperatureScaling(apply_to=["validate"])
