"""The ``lightning-mix`` command: every preset in callbacks/ composes with a config and runs; the main job parses and tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_mix.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny.yaml"
TINY_VIT = ROOT / "examples" / "tiny_vit.yaml"  # for presets that start with "# requires: vit"
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))


def preset_classes(path: Path) -> list[str]:
    config = yaml.safe_load(path.read_text())
    return [entry["class_path"].rsplit(".", 1)[-1] for entry in config["trainer"]["callbacks+"]]


def test_there_is_a_preset_for_every_public_callback():
    import lightning_mix.callbacks as callbacks

    covered = {name for path in PRESETS for name in preset_classes(path)}
    missing = set(callbacks.__all__) - covered
    assert not missing, f"callbacks without a preset in callbacks/: {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_composes_with_a_config_and_fits(preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = TINY_VIT if preset.read_text().startswith("# requires: vit") else TINY
    cli = run_cli(["fit", "--config", str(base), "--config", str(preset)])
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    for expected in preset_classes(preset):
        assert expected in names, f"{preset.name} did not add {expected}: {names}"
    assert cli.trainer.state.finished


@pytest.mark.slow
def test_main_job_config_trains_and_tests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        [
            "fit",
            "--config",
            str(ROOT / "examples" / "mnist5k.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=2",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert "test/acc" in metrics and 0.0 <= float(metrics["test/acc"]) <= 1.0
    assert "test/nll" in metrics


@pytest.mark.slow
def test_console_script_exits_zero_and_prints_test_metrics(tmp_path):
    import subprocess
    import sys

    script = Path(sys.executable).parent / "lightning-mix"
    assert script.exists(), "the lightning-mix console script is not installed next to python"
    proc = subprocess.run(
        [str(script), "fit", "--config", str(TINY), "--test_after_fit", "true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc" in proc.stdout


def test_main_destroys_the_process_group_even_when_the_command_fails(tmp_path):
    """A gloo group left to interpreter shutdown can abort a finished DDP run; main closes it."""
    import torch.distributed as dist

    from lightning_mix.cli import close_process_group, main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit):
            main(["fit", "--no_such_option", "1"])
        assert not dist.is_initialized()
        close_process_group()  # nothing left to close: a no-op, not an error
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store2'}", rank=0, world_size=1)
        close_process_group()  # the normal exit: barrier, then destroy
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
