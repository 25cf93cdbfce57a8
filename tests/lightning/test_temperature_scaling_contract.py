"""TemperatureScaling composes (issue 10): public transfer path, precision plugin, final weights whatever
the callbacks order, one chosen validation loader, forward hook, non-finite logits."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import EMA
from lightning_mix.callbacks.temperature_scaling import TemperatureScaling
from lightning_mix.metrics import fit_temperature

SCALE = 50.0  # raw inputs are SCALE times what the model expects; on_before_batch_transfer divides


def _tensors(n=192, d=12, c=4, seed=0, noise=1.0):
    w = torch.randn(d, c, generator=torch.Generator().manual_seed(1234))  # one task for every split
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.multinomial((x @ w / noise).softmax(-1), 1, generator=g).squeeze(1)
    return x * SCALE, y


def _loader(x, y, batch_size=32):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class Linear(pl.LightningModule):
    """A linear classifier that normalises its raw inputs in on_before_batch_transfer (public hook)."""

    def __init__(self, d=12, c=4, nan_at_eval=False):
        super().__init__()
        self.net = torch.nn.Linear(d, c)
        self.nan_at_eval = nan_at_eval
        self.forward_in_dict_during_test: list[bool] = []

    def forward(self, x):
        out = self.net(x) * 3  # overconfident on purpose
        if self.nan_at_eval and not self.training:
            out = out * float("nan")
        return out

    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return [x / SCALE, y]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        return F.cross_entropy(self(x), y)  # no logits returned: the callbacks run their own forward

    def test_step(self, batch, batch_idx):
        self.forward_in_dict_during_test.append("forward" in self.__dict__)
        x, y = batch
        self.log("test/nll", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _trainer(tmp_path, callbacks, **kwargs):
    options = {"accelerator": "auto", "devices": "auto", "max_epochs": 2, "limit_train_batches": 4, **kwargs}
    return tiny_trainer(default_root_dir=tmp_path, callbacks=callbacks, **options)


@torch.no_grad()
def _expected_temperature(model, x, y, dtype=torch.float32):
    model.eval()
    return fit_temperature(model(x.to(dtype) / SCALE).float(), y)  # convert_input, then the hook


def test_logits_come_through_on_before_batch_transfer(tmp_path):
    torch.manual_seed(0)
    x, y = _tensors()
    model, ts = Linear(), TemperatureScaling(verbose=False)
    _trainer(tmp_path, [ts]).fit(model, _loader(x, y), _loader(*_tensors(seed=1)))
    vx, vy = _tensors(seed=1)
    assert ts.temperature == pytest.approx(_expected_temperature(model, vx, vy), rel=1e-5)
    assert ts.min_temperature < ts.temperature < ts.max_temperature
    # the raw (un-normalised) inputs would give a very different temperature
    with torch.no_grad():
        raw_t = fit_temperature(model(vx), vy)
    assert abs(raw_t - ts.temperature) > 0.1


def test_bf16_true_precision_fits_on_the_precision_plugins_inputs(tmp_path):
    torch.manual_seed(0)
    model, ts = Linear(), TemperatureScaling(verbose=False)
    _trainer(tmp_path, [ts], precision="bf16-true").fit(model, _loader(*_tensors()), _loader(*_tensors(seed=1)))
    assert next(model.parameters()).dtype == torch.bfloat16
    vx, vy = _tensors(seed=1)
    assert ts.fitted
    assert ts.temperature == pytest.approx(_expected_temperature(model, vx, vy, torch.bfloat16), rel=1e-4)


@pytest.mark.parametrize("ema_first", [True, False], ids=["EMA-then-TS", "TS-then-EMA"])
def test_fits_on_the_final_weights_whatever_the_callbacks_order(tmp_path, ema_first):
    torch.manual_seed(0)
    model, ts, ema = Linear(), TemperatureScaling(verbose=False, fit_every_validation=False), EMA(decay=0.9)
    callbacks = [ema, ts] if ema_first else [ts, ema]
    vx, vy = _tensors(seed=1)
    _trainer(tmp_path, callbacks).fit(model, _loader(*_tensors()), _loader(vx, vy))
    average = ema.averaged_state_dict()
    assert all(torch.equal(average[k].to(v.dtype), v) for k, v in model.state_dict().items())  # EMA holds the module
    assert ts.temperature == pytest.approx(_expected_temperature(model, vx, vy), rel=1e-5)
    assert ts.report["samples"] == len(vy)


def _multi_loader_fit(tmp_path, ts):
    torch.manual_seed(0)
    model = Linear()
    in_dist, ood = _tensors(seed=1), _tensors(seed=2)
    ood = (ood[0], torch.randint(0, 4, (len(ood[1]),), generator=torch.Generator().manual_seed(3)))
    _trainer(tmp_path, [ts]).fit(model, _loader(*_tensors()), [_loader(*in_dist), _loader(*ood)])
    return model, in_dist, ood


@pytest.mark.parametrize("index", [0, 1])
def test_fits_on_the_chosen_validation_loader_only(tmp_path, index):
    ts = TemperatureScaling(verbose=False, dataloader_idx=index)
    model, in_dist, ood = _multi_loader_fit(tmp_path, ts)
    chosen = (in_dist, ood)[index]
    assert ts.report["samples"] == len(chosen[1])  # never both loaders pooled
    expected = _expected_temperature(model, *chosen)
    assert ts.temperature == pytest.approx(expected, rel=1e-5)
    # the per-validation fit (the last validation saw the final weights) used the same loader only
    assert float(model.trainer.callback_metrics["val/cal/temperature"]) == pytest.approx(expected, rel=1e-4)


def test_an_index_past_the_validation_loaders_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"dataloader_idx=2.*2 validation dataloader"):
        _multi_loader_fit(tmp_path, TemperatureScaling(verbose=False, dataloader_idx=2))
    with pytest.raises(ValueError, match="dataloader_idx"):
        TemperatureScaling(dataloader_idx=-1)


def test_applies_t_with_a_forward_hook_and_removes_it(tmp_path):
    torch.manual_seed(0)
    model, ts = Linear(), TemperatureScaling(verbose=False)
    trainer = _trainer(tmp_path, [ts])
    vx, vy = _tensors(seed=1)
    trainer.fit(model, _loader(*_tensors()), _loader(vx, vy))
    tested = trainer.test(model, _loader(vx, vy), verbose=False)[0]
    assert model.forward_in_dict_during_test and not any(model.forward_in_dict_during_test)  # forward not replaced
    model.eval()
    with torch.no_grad():
        logits = model(vx / SCALE)  # hook removed: raw logits again
        expected = model.net(vx / SCALE) * 3
    assert torch.equal(logits, expected)
    assert tested["test/nll"] == pytest.approx(float(F.cross_entropy(logits / ts.temperature, vy)), rel=1e-5)


def test_non_finite_logits_are_a_clear_error_never_a_fitted_t(tmp_path):
    torch.manual_seed(0)
    model, ts = Linear(nan_at_eval=True), TemperatureScaling(verbose=False)
    with (
        pytest.warns(UserWarning, match="no temperature for this validation epoch"),
        pytest.raises(ValueError, match="non-finite values"),
    ):
        _trainer(tmp_path, [ts]).fit(model, _loader(*_tensors()), _loader(*_tensors(seed=1)))
    assert not ts.fitted and ts.temperature == 1.0


def test_the_hook_is_removed_when_a_test_run_fails(tmp_path):
    class Failing(Linear):
        def test_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    torch.manual_seed(0)
    model, ts = Failing(), TemperatureScaling(verbose=False)
    ts.temperature, ts.fitted = 2.0, True
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, [ts]).test(model, _loader(*_tensors(seed=1)), verbose=False)
    x = torch.randn(3, 12)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x) * 3)  # no scaled forward left behind


@pytest.mark.parametrize("soup_first", [True, False], ids=["soup-then-TS", "TS-then-soup"])
def test_fits_on_the_soup_the_module_ends_with_whatever_the_order(tmp_path, soup_first):
    """Issue 10 item 5: with ModelSoup the temperature is fitted on the soup, not on the trained weights."""
    from lightning_mix.callbacks import ModelSoup

    torch.manual_seed(0)
    model = Linear()
    ts = TemperatureScaling(verbose=False, fit_every_validation=False)
    soup = ModelSoup(recalibrate_bn=False, keep="uniform", save_soups=False)
    trained = {}

    class RecordTrained(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trained.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    callbacks = [soup, ts] if soup_first else [ts, soup]
    vx, vy = _tensors(seed=1)
    _trainer(tmp_path, [RecordTrained(), *callbacks]).fit(model, _loader(*_tensors()), _loader(vx, vy))
    assert not torch.equal(model.net.weight, trained["net.weight"])  # the uniform soup replaced the weights
    assert ts.temperature == pytest.approx(_expected_temperature(model, vx, vy), rel=1e-5)
    trained_model = Linear()
    trained_model.load_state_dict(trained)
    assert abs(ts.temperature - _expected_temperature(trained_model, vx, vy)) > 1e-4  # it would differ
