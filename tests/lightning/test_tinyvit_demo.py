"""TinyViT options: the conv stem's token grid and locality, the warmup-cosine schedule, DeiT's decay rule."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import SMMixTinyViT, TinyViT
from lightning_mix.demos.vit import warmup_cosine_factor


@pytest.mark.parametrize("patch_size", [4, 7])
def test_conv_stem_gives_the_patch_grid(patch_size):
    model = TinyViT(patch_size=patch_size, dim=16, depth=1, num_heads=2, stem="conv", stem_channels=8)
    grid = 28 // patch_size
    assert model.patch_embed(torch.randn(3, 1, 28, 28)).shape == (3, 16, grid, grid)
    assert model.pos_embed.shape == (1, grid * grid + 1, 16)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_conv_stem_token_sees_its_patch_and_a_two_pixel_border_only():
    torch.manual_seed(0)
    p = 7
    model = TinyViT(patch_size=p, dim=8, depth=1, num_heads=2, stem="conv", stem_channels=4).eval()
    images = torch.randn(1, 1, 28, 28, requires_grad=True)
    i, j = 1, 2  # token row 1, column 2: pixels rows 7..13, columns 14..20
    model.patch_embed(images)[0, :, i, j].sum().backward()
    touched = images.grad[0, 0].abs() > 0
    rows, cols = torch.nonzero(touched, as_tuple=True)
    # two 3x3 convolutions (stride 1) widen the patch by 2 pixels on each side, no more
    assert (rows.min().item(), rows.max().item()) == (i * p - 2, (i + 1) * p - 1 + 2)
    assert (cols.min().item(), cols.max().item()) == (j * p - 2, (j + 1) * p - 1 + 2)


def test_patch_stem_token_sees_exactly_its_patch():
    torch.manual_seed(0)
    model = TinyViT(patch_size=7, dim=8, depth=1, num_heads=2).eval()
    images = torch.randn(1, 1, 28, 28, requires_grad=True)
    model.patch_embed(images)[0, :, 3, 0].sum().backward()
    rows, cols = torch.nonzero(images.grad[0, 0].abs() > 0, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (21, 27, 0, 6)


def test_warmup_cosine_factor_by_hand():
    # 2 warmup steps of 10: 1/3, 2/3, then cosine from 1 over the 8 remaining steps
    assert warmup_cosine_factor(0, 2, 10) == pytest.approx(1 / 3)
    assert warmup_cosine_factor(1, 2, 10) == pytest.approx(2 / 3)
    assert warmup_cosine_factor(2, 2, 10) == pytest.approx(1.0)
    assert warmup_cosine_factor(6, 2, 10) == pytest.approx(0.5)  # half way through the decay: cos(pi / 2) = 0
    assert warmup_cosine_factor(10, 2, 10) == pytest.approx(0.0)
    assert warmup_cosine_factor(0, 0, 10) == pytest.approx(1.0)


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_fit_follows_the_per_step_warmup_then_cosine(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    record = _RecordLR()
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        default_root_dir=tmp_path,
    )
    model = TinyViT(patch_size=7, dim=16, depth=1, num_heads=2, lr=1e-2, warmup_epochs=1)
    trainer.fit(model, DataLoader(data, batch_size=4))  # 4 steps an epoch, 16 in all, 4 of warmup
    want = [1e-2 * (s + 1) / 5 for s in range(4)] + [
        1e-2 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 12)) for s in range(4, 16)
    ]
    assert record.lrs == pytest.approx(want)


def test_no_weight_decay_on_biases_norms_class_token_and_positions():
    model = TinyViT(
        patch_size=7,
        dim=16,
        depth=1,
        num_heads=2,
        stem="conv",
        stem_channels=4,
        weight_decay=0.1,
        cosine_schedule=False,
    )
    optimizer = model.configure_optimizers()
    by_id = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert len(by_id) == len(names)
    for name, param in names.items():
        no_decay = name.endswith(".bias") or "norm" in name or name in ("cls_token", "pos_embed") or param.ndim == 1
        assert by_id[id(param)] == (0.0 if no_decay else 0.1), name
    assert by_id[id(names["patch_embed.1.weight"])] == 0.0  # the stem's BatchNorm scale


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="stem must be one of"):
        TinyViT(stem="resnet")
    with pytest.raises(ValueError, match="stem_channels must be a positive"):
        TinyViT(stem="conv", stem_channels=0)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        TinyViT(warmup_epochs=-1)


def test_smmix_tinyvit_takes_the_stem_and_its_features_come_through_it():
    torch.manual_seed(0)
    model = SMMixTinyViT(patch_size=7, dim=16, depth=1, num_heads=2, stem="conv", stem_channels=4, mix_seed=0).eval()
    images = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model.forward_head(model.forward_features(images)), model(images))
    assert model.hparams.stem == "conv"


class _RecordStepLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_warmup_counts_optimizer_steps_with_accumulation(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    record = _RecordStepLR()
    trainer = pl.Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,  # 4 batches an epoch -> 2 optimiser steps an epoch, 6 in all
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        default_root_dir=tmp_path,
    )
    model = TinyViT(patch_size=7, dim=16, depth=1, num_heads=2, lr=1e-2, warmup_epochs=1)
    trainer.fit(model, DataLoader(data, batch_size=4))
    want = [1e-2 / 3, 2e-2 / 3] + [1e-2 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert record.lrs == pytest.approx(want)


def test_warmup_in_a_max_steps_only_fit_is_refused_before_training(tmp_path):
    data = TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    model = TinyViT(patch_size=7, dim=16, depth=1, num_heads=2, warmup_epochs=1)
    with pytest.raises(ValueError, match="set Trainer\\(max_epochs=...\\)"):
        trainer.fit(model, DataLoader(data, batch_size=4))
    assert trainer.global_step == 0
