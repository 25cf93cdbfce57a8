"""The ViT mixing presets compose with the ViT smoke config and the ViT base config parses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_mix.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = ROOT / "examples" / "tiny_vit.yaml"
VIT_PRESETS = [ROOT / "callbacks" / name for name in ("transmix.yaml", "tl_align.yaml", "token_shuffle.yaml")]
VIT_MARKER = "# requires: vit"


def test_vit_presets_carry_the_marker_that_routes_them_to_a_vit_config():
    marked = sorted(p.name for p in (ROOT / "callbacks").glob("*.yaml") if p.read_text().startswith(VIT_MARKER))
    assert marked == sorted(p.name for p in VIT_PRESETS)


def preset_classes(path: Path) -> list[str]:
    config = yaml.safe_load(path.read_text())
    return [entry["class_path"].rsplit(".", 1)[-1] for entry in config["trainer"]["callbacks+"]]


@pytest.mark.slow
@pytest.mark.parametrize("preset", VIT_PRESETS, ids=[p.stem for p in VIT_PRESETS])
def test_vit_preset_composes_with_a_vit_config_and_fits(preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", str(TINY_VIT), "--config", str(preset)])
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    for expected in preset_classes(preset):
        assert names.count(expected) == 1, f"{preset.name} did not add exactly one {expected}: {names}"
    assert cli.trainer.state.finished
    added = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ in preset_classes(preset))
    if hasattr(added, "label_smoothing"):
        assert added.label_smoothing == 0.1  # the authors' recipes
    else:
        assert added.shuffle_rate == 0.1


@pytest.mark.slow
def test_vit_base_config_has_no_callbacks_and_builds_tinyvit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "examples" / "mnist5k_vit.yaml").read_text())
    assert "callbacks" not in config["trainer"], "presets append callbacks; the base keeps none"
    cli = run_cli(
        [
            "fit",
            "--config",
            str(ROOT / "examples" / "mnist5k_vit.yaml"),
            "--config",
            str(ROOT / "callbacks" / "transmix.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1",
            "--trainer.logger=false",
        ]
    )
    assert type(cli.model).__name__ == "TinyViT" and cli.model.hparams.patch_size == 7
    assert "test/acc" in cli.trainer.callback_metrics
