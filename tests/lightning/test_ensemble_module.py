"""The Ensemble LightningModule: validate fits weights and temperature, test and predict use them."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from tiny_trainer import tiny_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import SmallCNN
from lightning_mix.evaluation.ensembling import fit_ensemble_weights
from lightning_mix.metrics import fit_temperature
from lightning_mix.modules import Ensemble


class _FixedLogits(nn.Module):
    """A 'model' whose logits are a fixed linear map of the input (a trained member, for the test)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight.data.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _data(n=256, c=3, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w_true = torch.randn(c, d, generator=g)
    y = (x @ w_true.T).argmax(-1)
    members = [
        _FixedLogits(3.0 * w_true),
        _FixedLogits(w_true + torch.randn(c, d, generator=g)),
        _FixedLogits(torch.randn(c, d, generator=g)),
    ]
    return x, y, members


def _loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=64)


def _trainer():
    return tiny_trainer(devices="auto", enable_checkpointing=True, num_sanity_val_steps=2, max_epochs=None)


@pytest.mark.slow
def test_validate_fits_weights_and_temperature_then_test_and_predict_use_them():
    x, y, members = _data()
    ensemble = Ensemble(members=members, weighting="nll", temperature_scaling=True)
    trainer = _trainer()
    trainer.validate(ensemble, dataloaders=_loader(x, y))
    with torch.no_grad():
        log_p = torch.stack([F.log_softmax(m(x), -1) for m in members])
    expected_w = fit_ensemble_weights(log_p, y)
    assert torch.allclose(ensemble.weights, expected_w, atol=1e-6)
    combined = torch.logsumexp(log_p.double() + expected_w.log()[:, None, None], 0)
    assert float(ensemble.temperature) == pytest.approx(fit_temperature(combined, y), rel=1e-4)

    test_nll = trainer.test(ensemble, dataloaders=_loader(x, y))[0]["test/nll"]
    uniform = Ensemble(members=members)
    uniform_nll = trainer.test(uniform, dataloaders=_loader(x, y))[0]["test/nll"]
    assert test_nll < uniform_nll

    probs = torch.cat(trainer.predict(ensemble, dataloaders=_loader(x, y)))
    assert torch.allclose(probs.sum(-1), torch.ones(len(x)), atol=1e-5)
    scaled = F.softmax(combined / float(ensemble.temperature), -1).float()
    assert torch.allclose(probs, scaled, atol=1e-5)


def test_uniform_ensemble_averages_probabilities_and_fits_nothing():
    x, y, members = _data()
    ensemble = Ensemble(members=members)
    _trainer().validate(ensemble, dataloaders=_loader(x, y))
    assert torch.allclose(ensemble.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
        assert torch.allclose(ensemble(x).exp(), expected, atol=1e-6)


@pytest.mark.slow
def test_members_from_checkpoints_stay_frozen_in_eval_mode(tmp_path):
    paths = []
    for seed in (0, 1):
        pl.seed_everything(seed)
        model = SmallCNN(width=4)
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        images = torch.randn(32, 1, 28, 28)
        trainer.fit(
            model, train_dataloaders=DataLoader(TensorDataset(images, torch.randint(0, 10, (32,))), batch_size=16)
        )
        paths.append(str(tmp_path / f"m{seed}.ckpt"))
        trainer.save_checkpoint(paths[-1])
    ensemble = Ensemble(checkpoints=paths, member_class="lightning_mix.demos.SmallCNN", weighting="nll")
    ensemble.train()
    assert all(not m.training for m in ensemble.members)
    assert not any(p.requires_grad for p in ensemble.parameters())
    loaded = SmallCNN.load_from_checkpoint(paths[1], map_location="cpu").eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ensemble.member_log_probs(x)[1], loaded(x).log_softmax(-1), atol=1e-6)

    # the fitted weights travel in the ensemble's own checkpoint
    trainer = _trainer()
    images, labels = torch.randn(48, 1, 28, 28), torch.randint(0, 10, (48,))
    trainer.validate(ensemble, dataloaders=_loader(images, labels), verbose=False)
    trainer.save_checkpoint(tmp_path / "ensemble.ckpt")
    reloaded = Ensemble.load_from_checkpoint(tmp_path / "ensemble.ckpt", map_location="cpu")
    assert not torch.allclose(ensemble.weights, torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.equal(reloaded.weights, ensemble.weights)


def test_bad_configuration_is_named():
    _, _, members = _data()
    with pytest.raises(ValueError, match="either as `members`"):
        Ensemble()
    with pytest.raises(ValueError, match="member_class"):
        Ensemble(checkpoints=["a.ckpt"])
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(members=members[:1])
    with pytest.raises(ValueError, match="weighting must be"):
        Ensemble(members=members, weighting="stacking")
    with pytest.raises(RuntimeError, match="not trained with trainer.fit"):
        Ensemble(members=members).configure_optimizers()
