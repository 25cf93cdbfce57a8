"""EMA and SWA together and their checkpoints (issue 10, items 1, 2 and the SWA part of 11).

- item 1: ``validate``/``test``/``predict(ckpt_path=...)`` with ``EMA`` in the Trainer evaluate the
  weights the fit evaluated (the EMA), not the trained weights in ``current_model_state``;
- item 2: with two averaging callbacks, one owns the module's final weights (an error at setup
  otherwise), and a checkpoint saved after fit holds in ``state_dict`` what the module holds and
  the trained weights in ``current_model_state``;
- item 11: SWA's BatchNorm pass finds the input of a dict batch without ``input_key`` and stops a
  misconfigured fit before its first optimizer step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ema_common import TinyBN, float_state
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny_trainer import tiny_trainer

from lightning_mix.callbacks import EMA, SWA

pytestmark = pytest.mark.slow


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return tiny_trainer(callbacks=callbacks, **{"max_epochs": 2, "default_root_dir": tmp_path, **kwargs})


class TinyBNWithTest(TinyBN):
    def test_step(self, batch, batch_idx):
        self.log("test/loss", F.cross_entropy(self(batch["x"]), batch["y"]))

    def test_dataloader(self):
        return self.val_dataloader()


class SeenWeights(Callback):
    """The module's weights when validation, test and prediction start, and the trained weights at each epoch end."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, torch.Tensor]] = {}

    def on_validation_start(self, trainer, pl_module):
        self.seen["validate"] = float_state(pl_module)

    def on_test_start(self, trainer, pl_module):
        self.seen["test"] = float_state(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen["trained"] = float_state(pl_module)


def _val_loss(model: TinyBN) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(model.val_x), model.val_y)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_evaluating_a_checkpoint_uses_the_ema_like_the_end_of_fit(tmp_path):
    seed_everything(0)
    model = TinyBNWithTest()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = _trainer(tmp_path, [EMA(decay=0.8), ckpt], enable_checkpointing=True)
    trainer.fit(model)
    end_of_fit = float_state(model)  # the module holds the EMA
    logged = trainer.callback_metrics["val/loss"].clone()  # the last validation, on the EMA weights
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    assert not torch.equal(saved["current_model_state"]["fc1.weight"], end_of_fit["fc1.weight"])

    # a fresh Trainer with the same callbacks, as `lightning-mix test --config ... --ckpt_path` builds it
    probe = SeenWeights()
    fresh = _trainer(tmp_path, [EMA(decay=0.8), probe])
    fresh.test(TinyBNWithTest(), ckpt_path=path, verbose=False)
    fresh.validate(TinyBNWithTest(), ckpt_path=path, verbose=False)
    _assert_same(probe.seen["test"], end_of_fit)
    _assert_same(probe.seen["validate"], end_of_fit)
    assert torch.allclose(fresh.callback_metrics["val/loss"], logged, atol=1e-6)
    _assert_same(float_state(TinyBNWithTest.load_from_checkpoint(path)), end_of_fit)


def test_resuming_from_an_ema_checkpoint_trains_on_the_trained_weights(tmp_path):
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _trainer(tmp_path, [EMA(decay=0.8), ckpt], max_epochs=1, enable_checkpointing=True).fit(TinyBN())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    seen = {}

    class AtStart(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(float_state(pl_module))

    _trainer(tmp_path, [EMA(decay=0.8), AtStart()]).fit(TinyBN(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    _assert_same(seen, float_state(saved["current_model_state"]))


def test_two_owners_are_an_error_at_setup_naming_both(tmp_path):
    steps = []

    class Steps(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            steps.append(batch_idx)

    with pytest.raises(ValueError, match=r"EMA and SWA .*owns_final_weights"):
        _trainer(tmp_path, [EMA(), SWA(), Steps()]).fit(TinyBN())
    assert steps == []  # before any training


@pytest.mark.parametrize("order", ["ema_first", "swa_first"])
def test_swa_owner_with_ema_on_the_side_checkpoint_holds_the_module(tmp_path, order):
    seed_everything(0)
    model = TinyBN()
    ema, swa, probe = EMA(decay=0.8, owns_final_weights=False), SWA(start_epoch=1), SeenWeights()
    callbacks = [ema, swa, probe] if order == "ema_first" else [swa, ema, probe]
    trainer = _trainer(tmp_path, callbacks, max_epochs=3)
    trainer.fit(model)
    module = float_state(model)
    # the module holds the SWA model with its BatchNorm pass: bn_in's statistics are those of the training inputs
    x = model.train_x.double()
    assert torch.allclose(model.bn_in.running_mean.double(), x.mean(0), atol=1e-5)
    _assert_same(module, float_state(swa.averaged_state_dict()))
    path = tmp_path / "after_fit.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    _assert_same(float_state(saved["state_dict"]), module)  # what the module holds
    _assert_same(float_state(saved["current_model_state"]), probe.seen["trained"])  # the trained weights
    # the side EMA is in its callback state, not in state_dict
    _assert_same(float_state(saved["callbacks"]["EMA"]["average"]), float_state(ema.averaged_state_dict()))
    reloaded = TinyBN.load_from_checkpoint(path)
    assert torch.equal(_val_loss(reloaded), _val_loss(model))  # the same loss in memory and reloaded


def test_ema_owner_with_swa_on_the_side(tmp_path):
    seed_everything(0)
    model = TinyBN()
    ema, swa = EMA(decay=0.8, owns_final_weights=True), SWA(start_epoch=1)  # SWA left at None: EMA wins
    trainer = _trainer(tmp_path, [swa, ema], max_epochs=3)
    trainer.fit(model)
    assert ema.owns_weights and not swa.owns_weights
    _assert_same(float_state(model), float_state(ema.averaged_state_dict()))
    # SWA's average got its BatchNorm pass on the side, and the module was left as the EMA
    x = model.train_x.double()
    assert torch.allclose(swa.averaged_state_dict()["bn_in.running_mean"].double(), x.mean(0), atol=1e-5)
    assert not torch.allclose(model.bn_in.running_mean.double(), x.mean(0), atol=1e-3)
    path = tmp_path / "after_fit.ckpt"
    trainer.save_checkpoint(path)
    _assert_same(float_state(torch.load(path, weights_only=False)["state_dict"]), float_state(model))


def test_swa_finds_the_input_of_a_dict_batch_without_input_key(tmp_path):
    seed_everything(0)
    model = TinyBN()  # batches {"x": ..., "y": ...}, forward(x)
    _trainer(tmp_path, [SWA(start_epoch=1)], max_epochs=2).fit(model)
    x = model.train_x.double()
    assert torch.allclose(model.bn_in.running_mean.double(), x.mean(0), atol=1e-5)
    assert torch.allclose(model.bn_in.running_var.double(), x.var(0, unbiased=True), atol=1e-4)


def test_swa_input_it_cannot_find_stops_the_fit_before_the_first_step(tmp_path):
    class Renamed(TinyBN):
        def forward(self, inputs, scale=None):  # neither parameter names a batch key
            return super().forward(inputs)

    steps = []

    class Steps(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            steps.append(trainer.global_step)

    with pytest.raises(ValueError, match=r"SWA cannot tell which entry.*\['x', 'y'\].*input_key"):
        _trainer(tmp_path, [SWA(start_epoch=1), Steps()]).fit(Renamed())
    assert steps == []
    with pytest.raises(KeyError, match="no such entry"):
        _trainer(tmp_path, [SWA(start_epoch=1, input_key="image"), Steps()]).fit(TinyBN())
    assert steps == []


def test_weights_only_checkpoints_warn_at_setup(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_weights_only=True)
    with pytest.warns(UserWarning, match=r"save_weights_only=True.*trained weights"):
        _trainer(tmp_path, [EMA(), ckpt], max_epochs=1, limit_train_batches=1, enable_checkpointing=True).fit(TinyBN())
