"""The shared batch feed (callbacks/_batch_feed.py): input lookup and the Trainer's transfer path."""

from __future__ import annotations

import pytest
import torch
from ema_common import TinyBN
from lightning.pytorch import LightningDataModule, Trainer, seed_everything

from lightning_mix.callbacks import SWA
from lightning_mix.callbacks._batch_feed import _model_input, _resolve_input_key


def _forward(x, mask=None):
    return x


def test_resolve_input_key_rules():
    t = torch.zeros(2, 3)
    assert _resolve_input_key(t, _forward, None, "X") is None
    assert _resolve_input_key([t, t], _forward, None, "X") == 0
    assert _resolve_input_key((t, t), _forward, 1, "X") == 1
    assert _resolve_input_key({"x": t, "y": t}, _forward, None, "X") == "x"  # named like forward's parameter
    assert _resolve_input_key({"image": t, "meta": "a"}, lambda inputs: inputs, None, "X") == "image"  # one tensor
    with pytest.raises(ValueError, match=r"X cannot tell.*\['image', 'label'\].*X\(input_key=<key>\)"):
        _resolve_input_key({"image": t, "label": t}, _forward, None, "X")
    with pytest.raises(KeyError, match=r"no such entry; its keys are \['x'\]"):
        _resolve_input_key({"x": t}, _forward, "image", "X")
    with pytest.raises(KeyError, match="list of 2 elements"):
        _resolve_input_key([t, t], _forward, 5, "X")
    assert _model_input({"x": t, "y": 1}, "x") is t
    assert _model_input([t, 1], 0) is t


class Shifted(TinyBN):
    """Moves the inputs in its public transfer hooks: the BatchNorm pass must see what training sees."""

    def on_before_batch_transfer(self, batch, dataloader_idx):
        batch["x"] = batch["x"] * 3.0
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        batch["x"] = batch["x"] + 5.0
        return batch


def test_swa_bn_pass_goes_through_the_module_transfer_hooks(tmp_path):
    seed_everything(0)
    model = Shifted()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.callbacks.append(SWA(start_epoch=1))
    trainer.fit(model)
    x = model.train_x.double() * 3.0 + 5.0
    assert torch.allclose(model.bn_in.running_mean.double(), x.mean(0), atol=1e-5)
    assert torch.allclose(model.bn_in.running_var.double(), x.var(0, unbiased=True), atol=1e-3)


class ScalingData(LightningDataModule):
    """A DataModule that overrides on_before_batch_transfer: Lightning uses its hook, so must the pass."""

    def __init__(self, model: TinyBN) -> None:
        super().__init__()
        self.model = model

    def train_dataloader(self):
        return self.model.train_dataloader()

    def val_dataloader(self):
        return self.model.val_dataloader()

    def on_before_batch_transfer(self, batch, dataloader_idx):
        batch["x"] = batch["x"] - 2.0
        return batch


def test_swa_bn_pass_uses_the_datamodule_hook_when_it_overrides_it(tmp_path):
    seed_everything(0)
    model = TinyBN()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[SWA(start_epoch=1)],
    )
    trainer.fit(model, datamodule=ScalingData(model))
    x = model.train_x.double() - 2.0
    assert torch.allclose(model.bn_in.running_mean.double(), x.mean(0), atol=1e-5)
