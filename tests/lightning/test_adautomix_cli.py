"""AdAutoMixSmallCNN from LightningCLI: examples/mnist5k_adautomix.yaml is a complete base job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_cli import documented_combinations
from tiny_trainer import TINY_CLI

from lightning_mix.cli import run_cli
from lightning_mix.demos import AdAutoMixSmallCNN

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "mnist5k_adautomix.yaml"


def test_the_documented_fit_line_is_among_the_cli_tests_runs():
    assert ("examples/mnist5k_adautomix.yaml",) in documented_combinations()
    config = yaml.safe_load(CONFIG.read_text())
    assert not (config["trainer"].get("callbacks") or config["trainer"].get("callbacks+"))


@pytest.mark.slow
def test_adautomix_config_builds_the_demo_with_the_authors_defaults_and_two_optimisers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", str(CONFIG), *TINY_CLI])
    model = cli.model
    assert isinstance(model, AdAutoMixSmallCNN) and model.hparams.width == 32
    assert model.adautomix_mix_samples == 3 and model.adautomix_alpha == 1.0 and model.adautomix_beta == 0.3
    assert model.adautomix_lam_margin == 0.03 and model.adautomix_mixup_ratio == 0.5
    assert len(cli.trainer.optimizers) == 2
    assert cli.trainer.global_step == 2  # one count per optimisation step, both optimisers stepped
    assert "train/generator_loss" in cli.trainer.callback_metrics
