"""SUMixSmallCNN from LightningCLI: examples/mnist5k_sumix.yaml is a complete base job with SUMix's model."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_trainer import TINY_CLI

from lightning_mix.cli import run_cli
from lightning_mix.demos import SUMixSmallCNN
from lightning_mix.mixing import CutMix

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ["--config", str(ROOT / "examples" / "mnist5k_sumix.yaml")]


def test_sumix_config_builds_the_authors_mixer_and_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *CONFIG, *TINY_CLI])
    model = cli.model
    assert isinstance(model, SUMixSmallCNN) and model.hparams.width == 32
    mixer = model.sumix_mixer
    assert isinstance(mixer, CutMix) and (mixer.alpha, mixer.mode, mixer.pairing) == (0.2, "batch", "random")
    assert model.sumix_gamma == 0.1
    assert cli.trainer.global_step == 2 and "train/uncertainty" in cli.trainer.callback_metrics


def test_sumix_config_with_a_mixing_preset_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="SUMixMixin"):
        run_cli(["fit", *CONFIG, "--config", str(ROOT / "callbacks" / "cutmix.yaml"), *TINY_CLI])
