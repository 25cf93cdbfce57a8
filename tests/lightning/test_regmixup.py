"""RegMixup: batch layout, targets, loss = (CE(clean) + CE(mixed)) / 2, Trainer runs in fp32 and bf16-mixed."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.callbacks.regmixup import RegMixup
from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.losses import soft_cross_entropy


def _started(callback, module=None, rank=0):
    callback.on_fit_start(SimpleNamespace(global_rank=rank, datamodule=None), module or nn.Linear(1, 1))
    return callback


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 4, generator=g), torch.randint(0, 5, (n,), generator=g)]


def test_layout_and_targets():
    callback = _started(RegMixup(alpha=10.0, num_classes=5, label_smoothing=0.1, mode="elem", seed=0))
    batch = _batch()
    x, y = batch[0].clone(), batch[1].clone()
    callback.on_train_batch_start(None, None, batch, 0)
    index, lam = callback.last_index, callback.last_lam
    assert batch[0].shape == (12, 3, 4) and batch[1].shape == (12, 5)
    torch.testing.assert_close(batch[0][:6], x)
    w = lam.view(-1, 1, 1)
    torch.testing.assert_close(batch[0][6:], w * x + (1 - w) * x[index])
    smooth = F.one_hot(y, 5).float() * 0.9 + 0.02
    torch.testing.assert_close(batch[1][:6], smooth)
    torch.testing.assert_close(batch[1][6:], lam[:, None] * smooth + (1 - lam[:, None]) * smooth[index])
    # alpha = 10 concentrates lam around 0.5 (a sample the permutation left in place keeps lam = 1)
    moved = index != torch.arange(6)
    assert moved.any() and ((lam[moved] > 0.1) & (lam[moved] < 0.9)).all() and (lam[~moved] == 1).all()


def test_batch_mode_uses_one_lam_and_dict_batches_work():
    callback = _started(RegMixup(alpha=20.0, seed=1, input_key="image", target_key="label"))
    x = torch.randn(4, 2)
    t = torch.softmax(torch.randn(4, 3), -1)  # dense targets pass through without num_classes
    batch = {"image": x.clone(), "label": t.clone()}
    callback.on_train_batch_start(None, None, batch, 0)
    lam = callback.last_lam
    assert (lam == lam[0]).all()
    torch.testing.assert_close(batch["label"][:4], t)
    assert batch["image"].shape == (8, 2)


def test_loss_equals_half_of_clean_plus_mixed_ce():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    callback = _started(RegMixup(alpha=10.0, num_classes=5, seed=2, mode="elem"))
    batch = _batch()
    x, y = batch[0].clone(), batch[1].clone()
    callback.on_train_batch_start(None, model, batch, 0)
    index, lam = callback.last_index, callback.last_lam
    joint = soft_cross_entropy(model(batch[0]), batch[1])
    # computed separately: CE on the clean batch, mixup CE (lam CE(y) + (1-lam) CE(y[index])) on the mix
    w = lam.view(-1, 1, 1)
    logits_mix = model(w * x + (1 - w) * x[index])
    ce_clean = F.cross_entropy(model(x), y)
    ce_mixed = (
        lam * F.cross_entropy(logits_mix, y, reduction="none")
        + (1 - lam) * F.cross_entropy(logits_mix, y[index], reduction="none")
    ).mean()
    torch.testing.assert_close(joint, (ce_clean + ce_mixed) / 2)


def test_errors():
    callback = _started(RegMixup(seed=0))
    with pytest.raises(TypeError, match="tuple"):
        callback.on_train_batch_start(None, None, tuple(_batch()), 0)
    with pytest.raises(ValueError, match="num_classes"):
        callback.on_train_batch_start(None, None, _batch(), 0)
    with pytest.raises(ValueError, match="alpha"):
        RegMixup(alpha=0.0)


class _SizeCNN(SmallCNN):
    def training_step(self, batch, batch_idx):
        self.sizes = getattr(self, "sizes", []) + [batch[0].shape[0]]
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_sizes = getattr(self, "val_sizes", []) + [batch[0].shape[0]]
        assert not batch[1].is_floating_point()  # validation targets stay class indices
        return super().validation_step(batch, batch_idx)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_trainer_fit(precision):
    pl.seed_everything(0)
    model = _SizeCNN(width=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RegMixup(alpha=10.0)],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, MNIST5kDataModule(batch_size=16))
    assert model.sizes == [32, 32, 32] and model.val_sizes == [16]
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


# The DDP run (2 CPU processes) of this method is shared with the other model-level methods:
# tests/test_manifold_mixup.py::test_ddp_manifold_regmixup_and_rank_mixup.
