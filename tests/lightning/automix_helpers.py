"""Shared by the AutoMix tests and DDP script: the demo CNN with AutoMix, and a small fixed data set."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import SmallCNN
from lightning_mix.mixins import AutoMixMixin, SAMixMixin


class AutoMixCNN(AutoMixMixin, SmallCNN):
    """SmallCNN whose Mix Block reads ``feature_layer`` (``block2``: 2 * width channels, 7x7 on 28x28 inputs)."""

    def __init__(self, width: int = 4, seed: int = 0, feature_layer: str = "block2", lam_margin: float = 0.08):
        super().__init__(width=width, cosine_schedule=False)
        self.configure_automix(
            feature_layer=feature_layer, feature_channels=2 * width, seed=seed, lam_margin=lam_margin
        )


def make_data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def make_loader(batch_size: int = 8, n: int = 32) -> DataLoader:
    return DataLoader(make_data(n), batch_size=batch_size, shuffle=False)


class SAMixCNN(SAMixMixin, SmallCNN):
    """SmallCNN with SAMix's Mix Block on ``feature_layer``."""

    def __init__(
        self,
        width: int = 4,
        seed: int = 0,
        feature_layer: str = "block2",
        lam_margin: float = 0.08,
        mask_adjust: float = 0.25,
    ):
        super().__init__(width=width, cosine_schedule=False)
        self.configure_samix(
            feature_layer=feature_layer,
            feature_channels=2 * width,
            seed=seed,
            lam_margin=lam_margin,
            mask_adjust=mask_adjust,
        )


MODELS = {"automix": AutoMixCNN, "samix": SAMixCNN}


class EpochEndSnapshots(pl.Callback):
    """The parameters whose names start with ``prefixes`` at every epoch end (placed ahead of SWA, before
    it takes its snapshot)."""

    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, module):
        named = module.named_parameters()
        self.snapshots.append({n: p.detach().clone() for n, p in named if n.startswith(self.prefixes)})


def assert_swa_averages_the_mixer(model, loader, prefixes: tuple[str, ...], make_trainer) -> None:
    """Two epochs of SWA from epoch 0: the mixer's final weights are the mean of its two epoch-end snapshots."""
    from lightning_mix.callbacks import SWA

    record = EpochEndSnapshots(prefixes)
    swa = SWA(start_epoch=0, recalibrate_bn=False)
    make_trainer(max_epochs=2, limit_train_batches=2, callbacks=[record, swa]).fit(model, loader)
    assert swa.num_averaged == 2 and len(record.snapshots) == 2
    first, second = record.snapshots
    assert first and any(not torch.equal(first[n], second[n]) for n in first)
    for name, param in model.named_parameters():  # SWA owns the final weights
        if name.startswith(prefixes):
            torch.testing.assert_close(param.detach(), (first[name] + second[name]) / 2, rtol=0, atol=1e-7)


def assert_soup_ingredients_hold_the_mixer(model, loader, prefixes: tuple[str, ...], make_trainer) -> None:
    """Two epochs of ModelSoup: both ingredients hold parameters under every prefix."""
    from lightning_mix.callbacks import ModelSoup

    soup = ModelSoup(recalibrate_bn=False, save_soups=False)
    trainer = make_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=2, callbacks=[soup])
    trainer.fit(model, loader, loader)
    ingredients = soup.ingredient_state_dicts()
    assert len(ingredients) == 2 and trainer.state.finished
    for prefix in prefixes:
        assert all(any(k.startswith(prefix) for k in d) for d in ingredients)
