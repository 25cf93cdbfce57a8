"""RankMixupSmallCNN from LightningCLI: examples/mnist5k_rankmixup.yaml is a complete job with RankMixup's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_trainer import TINY_CLI

from lightning_mix.cli import run_cli
from lightning_mix.demos import RankMixupSmallCNN, SmallCNN

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ["--config", str(ROOT / "examples" / "mnist5k_rankmixup.yaml")]
MNDCG = ["--config", str(ROOT / "examples" / "rankmixup_mndcg.yaml")]


def test_rank_mixup_config_has_the_authors_defaults_and_trains_with_one_mixed_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *CONFIG, *TINY_CLI])
    model = cli.model
    assert isinstance(model, RankMixupSmallCNN) and model.hparams.width == 32
    options = (model.rank_mixup_loss, model.rank_mixup_weight, model.rank_mixup_margin, model.rank_mixup_alpha)
    assert options == ("mrl", 0.1, 2.0, 2.0)
    assert cli.trainer.global_step == 2
    assert model.rank_mixup_index.shape == (1, 128)  # K = 1 for MRL, one partner per sample of the batch
    assert "train/rank_loss" in cli.trainer.callback_metrics


def test_the_mndcg_overlay_switches_the_loss_and_draws_three_copies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *CONFIG, *MNDCG, *TINY_CLI])
    assert cli.model.rank_mixup_loss == "mndcg" and cli.model.hparams.rank_loss == "mndcg"
    assert cli.model.rank_mixup_index.shape == (3, 128)


def test_weight_zero_is_smallcnn_trained_with_cross_entropy():
    """With weight 0 the step is CE on the clean batch: the same gradients as SmallCNN's own step."""
    torch.manual_seed(0)
    rank = RankMixupSmallCNN(width=4, weight=0.0, mix_seed=0)
    plain = SmallCNN(width=4)
    plain.load_state_dict(rank.state_dict())
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    for model in (rank, plain):
        model.log = lambda *args, **kwargs: None  # no trainer attached: logging is not under test here
        model.training_step((x, y), 0).backward()
    for (name, a), (_, b) in zip(rank.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_rank_mixup_config_with_a_mixing_preset_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="RankMixupMixin"):
        run_cli(["fit", *CONFIG, "--config", str(ROOT / "callbacks" / "mixup.yaml"), *TINY_CLI])


def test_the_mixed_copies_update_batchnorm_last_and_recalibration_restores_clean_statistics():
    """The documented BatchNorm behaviour: with momentum 1 a layer's running variance is the last
    batch's, which after a RankMixup step is the mixed copies', not the clean batch's. (Means do not
    tell them apart: mixing a batch with a permutation of itself keeps its mean.)"""
    from lightning_mix.averaging import recalibrate_batchnorm

    torch.manual_seed(0)
    model = RankMixupSmallCNN(width=4, mix_seed=0)
    first_bn = next(m for m in model.block1.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_conv = next(m for m in model.block1.modules() if isinstance(m, torch.nn.Conv2d))
    first_bn.momentum = 1.0
    model.log = lambda *args, **kwargs: None  # no trainer attached: logging is not under test here
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    model.training_step((x, y), 0)
    index, lam = model.rank_mixup_index[0], model.rank_mixup_lam[0]
    mixed = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[index]
    with torch.no_grad():
        mixed_var = first_conv(mixed).var((0, 2, 3))  # unbiased, as BatchNorm's running_var
        clean_var = first_conv(x).var((0, 2, 3))
    torch.testing.assert_close(first_bn.running_var, mixed_var)
    assert not torch.allclose(first_bn.running_var, clean_var, rtol=1e-3)
    recalibrate_batchnorm(model, [(x, y)])
    torch.testing.assert_close(first_bn.running_var, clean_var)
