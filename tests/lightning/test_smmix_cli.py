"""SMMixTinyViT from LightningCLI: examples/mnist5k_smmix_vit.yaml composes with the ViT base job."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_trainer import TINY_CLI

from lightning_mix.cli import run_cli
from lightning_mix.demos import SMMixTinyViT

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [
    "--config",
    str(ROOT / "examples" / "mnist5k_vit.yaml"),
    "--config",
    str(ROOT / "examples" / "mnist5k_smmix_vit.yaml"),
]


def test_smmix_config_builds_smmix_vit_with_the_base_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *CONFIGS, *TINY_CLI])
    model = cli.model
    assert isinstance(model, SMMixTinyViT)
    assert model.patch_size == 7 and model.hparams.dim == 96 and len(model.blocks) == 6  # from mnist5k_vit.yaml
    assert model.hparams.stem == "conv" and isinstance(model.patch_embed, torch.nn.Sequential)  # the conv stem
    assert model.smmix_switch_prob == 0.5 and model.smmix_consistency_weight == 1.0
    assert cli.trainer.global_step == 2 and "train/consistency" in cli.trainer.callback_metrics


def test_smmix_config_with_a_mixing_preset_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="SMMixMixin"):
        run_cli(["fit", *CONFIGS, "--config", str(ROOT / "callbacks" / "cutmix.yaml"), *TINY_CLI])
