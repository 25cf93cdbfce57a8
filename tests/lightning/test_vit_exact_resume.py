"""Exact resume of ViT mixing: 2 epochs straight equal 1 epoch, a checkpoint, and a resumed 2nd epoch, bit for bit."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import TransMix
from lightning_mix.demos import SMMixTinyViT, TinyViT
from lightning_mix.mixing import CutMix

NUM_CLASSES = 5
# a constant learning rate: TinyViT's cosine schedule spans trainer.max_epochs, which the 1-epoch run
# sets to 1 (a different schedule, not a resume defect)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 1, 28, 28, generator=g), torch.randint(0, NUM_CLASSES, (24,), generator=g))
    return DataLoader(data, batch_size=8, shuffle=False)


def _trainer(root, callbacks, max_epochs: int, checkpointing: bool = False) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
    )


def _transmix():
    return TinyViT(num_classes=NUM_CLASSES, dim=32, depth=2, num_heads=2, cosine_schedule=False), [
        TransMix(CutMix(), num_classes=NUM_CLASSES, seed=0)
    ]


def _smmix():
    return SMMixTinyViT(num_classes=NUM_CLASSES, dim=32, depth=2, num_heads=2, cosine_schedule=False, mix_seed=0), []


@pytest.mark.parametrize("make", [_transmix, _smmix], ids=["transmix", "smmix"])
def test_resumed_second_epoch_gives_the_same_weights_bitwise(make, tmp_path):
    torch.manual_seed(0)
    straight, callbacks = make()
    _trainer(tmp_path / "a", callbacks, max_epochs=2).fit(straight, _loader())

    torch.manual_seed(0)
    first, callbacks = make()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _trainer(tmp_path / "b", [*callbacks, checkpoint], max_epochs=1, checkpointing=True).fit(first, _loader())
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), straight.state_dict().values()))

    torch.manual_seed(1)  # a different initialisation: everything must come from the checkpoint
    resumed, callbacks = make()
    trainer = _trainer(tmp_path / "c", callbacks, max_epochs=2)
    trainer.fit(resumed, _loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.global_step == 6
    want = straight.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, want[name]), name
