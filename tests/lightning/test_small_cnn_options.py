"""SmallCNN's options: the training loss (composed from YAML presets) and the kernel size."""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
import torch
import yaml

import lightning_mix.losses as losses
from lightning_mix.cli.lightning import build_cli
from lightning_mix.demos import SmallCNN
from lightning_mix.losses import soft_cross_entropy

ROOT = Path(__file__).resolve().parents[2]
LOSS_CONFIGS = sorted((ROOT / "examples" / "calibration_losses").glob("*.yaml"))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 28, 28, generator=g), torch.randint(0, 10, (6,), generator=g)


def _training_loss(model: SmallCNN, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    model.log = lambda *args, **kwargs: None  # no Trainer: logging is not under test
    return model.training_step((inputs, targets), 0)


@pytest.mark.parametrize("loss", [None, losses.FocalLoss(gamma=2.0), losses.MbLSLoss(margin=1e-3, alpha=1.0)])
def test_training_step_uses_the_given_loss_and_evaluation_stays_cross_entropy(loss):
    torch.manual_seed(0)
    model = SmallCNN(width=4, loss=loss).eval()  # eval: the same BatchNorm output in both forwards
    inputs, targets = _batch()
    logits = model(inputs)
    expected = soft_cross_entropy(logits, targets) if loss is None else loss(logits, targets)
    assert torch.allclose(_training_loss(model, inputs, targets), expected)
    if loss is not None:
        assert not torch.allclose(expected, soft_cross_entropy(logits, targets))  # the loss is not CE in disguise
    out = model.validation_step((inputs, targets), 0)
    assert torch.allclose(out["loss"], soft_cross_entropy(logits, targets))  # val/nll is the cross-entropy


def test_the_loss_module_is_not_a_saved_hyper_parameter(tmp_path):
    model = SmallCNN(width=4, loss=losses.FocalLoss())
    assert "loss" not in model.hparams
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    torch.save({**checkpoint, "pytorch-lightning_version": lightning.__version__}, tmp_path / "m.ckpt")
    restored = SmallCNN.load_from_checkpoint(tmp_path / "m.ckpt")
    assert restored.loss is None and restored.hparams.width == 4


def _configured_model(*configs: Path) -> SmallCNN:
    return build_cli([arg for c in configs for arg in ("--config", str(c))], run=False).model


def test_there_is_a_config_for_every_calibration_loss():
    named = {yaml.safe_load(p.read_text())["model"]["init_args"]["loss"]["class_path"] for p in LOSS_CONFIGS}
    modules = {f"lightning_mix.losses.{n}" for n in losses.__all__ if n[0].isupper()}
    assert named == modules


@pytest.mark.parametrize("config", LOSS_CONFIGS, ids=lambda p: p.stem)
def test_each_loss_config_composes_with_the_base_config(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _configured_model(ROOT / "examples" / "mnist5k.yaml", config)
    class_name = yaml.safe_load(config.read_text())["model"]["init_args"]["loss"]["class_path"].rsplit(".", 1)[-1]
    loss_class = getattr(losses, class_name)
    assert type(model.loss) is loss_class
    assert model.hparams.lr == 0.003 and model.hparams.width == 32  # the base config's settings are kept
    settings = {k: v for k, v in vars(model.loss).items() if not k.startswith("_")}
    assert settings == {k: v for k, v in vars(loss_class()).items() if not k.startswith("_")}  # the module's defaults
    model.eval()
    inputs, targets = _batch(1)
    assert torch.allclose(_training_loss(model, inputs, targets), loss_class()(model(inputs), targets))


def test_kernel_size_sets_the_first_two_blocks_and_keeps_every_shape():
    default = SmallCNN(width=4)
    assert default.block1[0].weight.shape == (4, 1, 5, 5) and default.block2[0].weight.shape == (8, 4, 5, 5)
    assert default.block3[0].weight.shape == (16, 8, 3, 3)
    narrow = SmallCNN(width=4, kernel_size=3)
    assert narrow.block1[0].weight.shape == (4, 1, 3, 3) and narrow.block2[0].weight.shape == (8, 4, 3, 3)
    inputs, _ = _batch()
    for model in (default, narrow):
        assert model.forward_features(inputs).shape == (6, 16) and model(inputs).shape == (6, 10)
    with pytest.raises(ValueError, match="positive odd number"):
        SmallCNN(kernel_size=4)


def test_tiny_vit_takes_the_same_loss_argument():
    from lightning_mix.demos import TinyViT

    torch.manual_seed(0)
    loss = losses.FocalLoss(gamma=2.0)
    vit = TinyViT(dim=16, depth=1, num_heads=2, loss=loss).eval()
    inputs, targets = _batch(2)
    assert torch.allclose(_training_loss(vit, inputs, targets), loss(vit(inputs), targets))
    assert "loss" not in vit.hparams and TinyViT(dim=16, depth=1, num_heads=2).loss is None
