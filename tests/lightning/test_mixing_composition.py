"""The mixing callbacks together: one mixer per Trainer, stop_epoch for every mixer, float labels refused."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from mixing_callback_helpers import NUM_CLASSES, RecordingClassifier, loader, make_data
from tiny_trainer import tiny_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import ManifoldMixup, MixingCallback, RegMixup
from lightning_mix.mixing import CutMix, Mixup
from lightning_mix.mixins import RankMixupMixin

pytestmark = pytest.mark.slow


def trainer(callbacks, epochs: int = 1) -> pl.Trainer:
    return tiny_trainer(max_epochs=epochs, num_sanity_val_steps=2, callbacks=callbacks)


class RankTiny(RankMixupMixin, pl.LightningModule):
    def __init__(self, **options):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, NUM_CLASSES))
        self.configure_rank_mixup(seed=0, **options)
        self.rank_losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.rank_losses.append(float(self.rank_mixup_index is not None))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "pair",
    [
        lambda: [MixingCallback(Mixup(), num_classes=NUM_CLASSES), MixingCallback(CutMix(), num_classes=NUM_CLASSES)],
        lambda: [MixingCallback(Mixup(), num_classes=NUM_CLASSES), ManifoldMixup(num_classes=NUM_CLASSES)],
        lambda: [RegMixup(num_classes=NUM_CLASSES), ManifoldMixup(num_classes=NUM_CLASSES)],
    ],
    ids=["mixing+mixing", "mixing+manifold", "regmixup+manifold"],
)
def test_two_mixing_callbacks_are_an_error_at_setup(pair):
    model = RecordingClassifier()
    with pytest.raises(ValueError, match=r"2 mixing callbacks .*Keep one"):
        trainer(pair()).fit(model, loader(make_data()))
    assert model.train_seen == []  # refused before the first step


def test_a_mixing_callback_with_a_rank_mixup_module_is_an_error_at_setup():
    model = RankTiny()
    with pytest.raises(ValueError, match=r"RankMixupMixin.*remove the callback"):
        trainer([MixingCallback(Mixup(), num_classes=NUM_CLASSES)]).fit(model, loader(make_data()))
    assert model.rank_losses == []


@pytest.mark.parametrize(
    ("demo", "mixin"),
    [
        ("AdAutoMixSmallCNN", "AdAutoMixMixin"),
        ("AdaMixUpSmallCNN", "AdaMixUpMixin"),
        ("SUMixSmallCNN", "SUMixMixin"),
        ("RankMixupSmallCNN", "RankMixupMixin"),
        ("AutoMixSmallCNN", "AutoMixMixin"),
        ("SAMixSmallCNN", "SAMixMixin"),
    ],
)
def test_every_mixin_that_mixes_its_own_batches_refuses_a_mixing_callback(demo, mixin):
    import lightning_mix.demos as demos

    model = getattr(demos, demo)(width=4)
    data = TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    with pytest.raises(ValueError, match=rf"is an? {mixin}, which .*remove the callback"):
        trainer([MixingCallback(Mixup(), num_classes=10)]).fit(model, DataLoader(data, batch_size=4))
    assert model.global_step == 0


def test_a_users_module_that_declares_mixes_own_batches_is_refused_by_name():
    class SelfMixing(RecordingClassifier):
        mixes_own_batches = "mixes pairs of its batch in training_step"

    model = SelfMixing()
    with pytest.raises(ValueError, match=r"is a SelfMixing, which mixes pairs of its batch in training_step; remove"):
        trainer([MixingCallback(Mixup(), num_classes=NUM_CLASSES)]).fit(model, loader(make_data()))
    assert model.train_seen == []


def _clean_one_hot(model, epoch_batches: slice):
    return all(torch.equal(y.max(-1).values, torch.ones(y.shape[0])) for _, y in model.train_seen[epoch_batches])


def test_manifold_mixup_stop_epoch_stops_mixing():
    data = make_data(32)  # two batches of 16 per epoch
    model = RecordingClassifier()
    callback = ManifoldMixup(layers=["input"], num_classes=NUM_CLASSES, stop_epoch=1, seed=0)
    trainer([callback], epochs=2).fit(model, loader(data))
    originals = torch.stack([data[i][0] for i in range(16)])
    assert len(model.train_seen) == 4
    assert not _clean_one_hot(model, slice(0, 2)) and _clean_one_hot(model, slice(2, 4))
    torch.testing.assert_close(model.train_seen[2][0], originals)
    assert callback.last_lam is None


def test_regmixup_stop_epoch_keeps_the_clean_batch_only():
    data = make_data(32)
    model = RecordingClassifier()
    trainer([RegMixup(num_classes=NUM_CLASSES, stop_epoch=1, seed=0)], epochs=2).fit(model, loader(data))
    sizes = [x.shape[0] for x, _ in model.train_seen]
    assert sizes == [32, 32, 16, 16]  # clean + mixed, then the clean batch alone
    assert _clean_one_hot(model, slice(2, 4))
    torch.testing.assert_close(model.train_seen[2][0], torch.stack([data[i][0] for i in range(16)]))


def test_rank_mixup_stop_epoch_leaves_plain_cross_entropy():
    model = RankTiny(stop_epoch=1)
    trainer([], epochs=2).fit(model, loader(make_data(32)))
    assert model.rank_losses == [1.0, 1.0, 0.0, 0.0]  # mixed copies drawn in epoch 0 only
    x, y = make_data(8)[:]
    model = RankTiny(stop_epoch=0)  # outside a Trainer current_epoch is 0: stopped from the start
    out = model.rank_mixup_losses(x, y)
    torch.testing.assert_close(out["loss"], nn.functional.cross_entropy(model(x), y))
    assert float(out["rank_loss"]) == 0.0


@pytest.mark.parametrize("stop_epoch", [-1])
def test_negative_stop_epoch_is_refused(stop_epoch):
    for make in (
        lambda: MixingCallback(Mixup(), stop_epoch=stop_epoch),
        lambda: ManifoldMixup(stop_epoch=stop_epoch),
        lambda: RegMixup(stop_epoch=stop_epoch),
        lambda: RankTiny(stop_epoch=stop_epoch),
    ):
        with pytest.raises(ValueError, match="stop_epoch must be a non-negative"):
            make()


def _float_label_data(n: int = 32) -> TensorDataset:
    data = make_data(n)
    return TensorDataset(data.tensors[0], data.tensors[1].float())  # class labels stored as floats


@pytest.mark.parametrize("make", [MixingCallback, ManifoldMixup, RegMixup], ids=lambda c: c.__name__)
def test_float_class_labels_are_refused_at_the_first_batch(make):
    callback = make(Mixup(), num_classes=NUM_CLASSES) if make is MixingCallback else make(num_classes=NUM_CLASSES)
    model = RecordingClassifier()
    with pytest.raises(ValueError, match=r"float targets of shape \(16,\).*\.long\(\).*regression=True"):
        trainer([callback]).fit(model, loader(_float_label_data()))
    assert model.train_seen == []


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(y.detach().clone())
        return nn.functional.mse_loss(self.net(x).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_regression_mode_mixes_values_with_the_mixers_lam():
    data = _float_label_data(16)
    recorder = []

    def mixer(inputs, targets, generator=None):
        out = Mixup(alpha=1.0, mode="elem", pairing="label_kernel")(inputs, targets, generator)
        recorder.append(out)
        return out

    model = Regressor()
    trainer([MixingCallback(mixer, regression=True, seed=0)]).fit(model, loader(data))
    y = data.tensors[1]
    out = recorder[0]
    torch.testing.assert_close(model.seen[0], out.lam * y + (1 - out.lam) * y[out.index])
    with pytest.raises(ValueError, match="num_classes and label_smoothing apply to class labels"):
        MixingCallback(Mixup(), num_classes=3, regression=True)
