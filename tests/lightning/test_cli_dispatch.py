"""The ``lightning-mix`` dispatcher: one module per command, no import cycle, no LightningCLI warning."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lightning_mix.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "merge", "soup"):
        assert f"  {command} " in out, out
    assert set(COMMANDS) >= {"fit", "validate", "test", "predict", "merge", "soup"}


def test_every_command_module_has_build_parser_and_main():
    import importlib

    for module_name, _ in COMMANDS.values():
        module = importlib.import_module(module_name)
        assert callable(module.build_parser) and callable(module.main), module_name


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit, match="unknown command 'mege'; choose one of fit, validate"):
        main(["mege"])


def test_merge_and_soup_import_without_lightning_and_without_a_cycle():
    code = (
        "import sys; import lightning_mix.cli.merge, lightning_mix.cli.soup, lightning_mix.cli; "
        "assert 'lightning.pytorch' not in sys.modules, 'merge/soup imported Lightning'; "
        "import lightning_mix.cli.lightning; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_no_lightning_cli_warning_when_arguments_come_from_the_dispatcher(monkeypatch):
    from lightning_mix.cli.lightning import build_cli

    monkeypatch.setattr(sys, "argv", ["lightning-mix", "fit", "--config", str(ROOT / "examples" / "tiny.yaml")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(["--config", str(ROOT / "examples" / "tiny.yaml")], run=False, save_config_callback=None)
    assert cli.model is not None
    assert not [w for w in caught if "args parameter" in str(w.message)], [str(w.message) for w in caught]
