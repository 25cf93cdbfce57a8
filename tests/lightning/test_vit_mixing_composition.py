"""TransMix and TLAlign with bf16-mixed, gradient accumulation, and next to EMA, ModelSoup and TemperatureScaling."""

from __future__ import annotations

import pytest
import torch
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader
from vit_callback_helpers import NUM_CLASSES, LastMixed, OriginalBatch, RecordingViT, make_data

from lightning_mix.callbacks import EMA, ModelSoup, TemperatureScaling, TLAlign, TokenShuffle, TransMix
from lightning_mix.mixing import CutMix, dense_targets, mix_targets
from lightning_mix.mixing.patch_grid import PatchCutMix


def _trainer(callbacks, **kwargs):
    defaults = {"max_epochs": None, "devices": "auto", "num_sanity_val_steps": 2, "callbacks": callbacks}
    return tiny_trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    "make",
    [
        lambda: TransMix(CutMix(), num_classes=NUM_CLASSES, seed=0),
        lambda: TLAlign(PatchCutMix(patch_size=4), num_classes=NUM_CLASSES, seed=0),
    ],
)
def test_bf16_mixed_and_gradient_accumulation_relabel_every_micro_batch(make):
    torch.manual_seed(0)
    original, mixing = OriginalBatch(), make()
    last = LastMixed(mixing)
    model = RecordingViT()
    trainer = _trainer([original, mixing, last], max_steps=2, accumulate_grad_batches=2, precision="bf16-mixed")
    trainer.fit(model, DataLoader(make_data(32), batch_size=8))
    assert len(model.seen) == 4 and len(last.mixed) == 4  # 2 optimizer steps x 2 micro-batches
    for (_, labels), record, mixed in zip(original.batches, model.seen, last.mixed):
        assert record["y"].dtype == torch.float32
        want = mix_targets(dense_targets(labels, NUM_CLASSES), mixed.index, mixed.lam)
        torch.testing.assert_close(record["y"], want)
        assert torch.all((mixed.lam > 0) & (mixed.lam <= 1))


@pytest.mark.parametrize("averaging", ["ema", "soup"])
def test_composes_with_weight_averaging_temperature_scaling_and_token_shuffle(averaging, tmp_path):
    torch.manual_seed(1)
    data = make_data(32)
    mixing = (
        TransMix(CutMix(), num_classes=NUM_CLASSES, seed=0)
        if averaging == "ema"
        else TLAlign(PatchCutMix(patch_size=4), num_classes=NUM_CLASSES, seed=0)
    )
    owner = EMA(decay=0.9) if averaging == "ema" else ModelSoup(recalibrate_bn=False)
    scaling = TemperatureScaling()
    trainer = _trainer(
        [mixing, TokenShuffle(shuffle_rate=0.1, seed=0), owner, scaling],
        max_epochs=2,
        default_root_dir=tmp_path,
        limit_val_batches=2,
    )
    loader = DataLoader(data, batch_size=8)
    model = RecordingViT()
    trainer.fit(model, loader, loader)
    assert trainer.state.finished and len(model.seen) == 8
    assert scaling.fitted and 0.05 <= scaling.temperature <= 20.0
    assert mixing.num_hooked_modules == 0  # the mixing hooks are gone after fit
