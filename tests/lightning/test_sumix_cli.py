"""SUMixSmallCNN from LightningCLI: examples/mnist5k_sumix.yaml is a complete base job with SUMix's model."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_mix.cli import run_cli
from lightning_mix.demos import SUMixSmallCNN
from lightning_mix.mixing import CutMix

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ["--config", str(ROOT / "examples" / "mnist5k_sumix.yaml")]
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--test_after_fit=false",
]


def test_sumix_config_builds_the_authors_mixer_and_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *CONFIG, *TINY])
    model = cli.model
    assert isinstance(model, SUMixSmallCNN) and model.hparams.width == 32
    mixer = model.sumix_mixer
    assert isinstance(mixer, CutMix) and (mixer.alpha, mixer.mode, mixer.pairing) == (0.2, "batch", "random")
    assert model.sumix_gamma == 0.1
    assert cli.trainer.global_step == 2 and "train/uncertainty" in cli.trainer.callback_metrics


def test_sumix_config_with_a_mixing_preset_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="SUMixMixin"):
        run_cli(["fit", *CONFIG, "--config", str(ROOT / "callbacks" / "cutmix.yaml"), *TINY])
