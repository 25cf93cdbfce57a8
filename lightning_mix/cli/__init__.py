"""The ``lightning-mix`` command: one module per command, picked by the first argument.

``fit``, ``validate``, ``test`` and ``predict`` run LightningCLI over any LightningModule and
LightningDataModule (:mod:`lightning_mix.cli.lightning`); ``merge`` merges checkpoints
(:mod:`lightning_mix.cli.merge`); ``soup`` builds a model soup from separate runs
(:mod:`lightning_mix.cli.soup`). Every command module exposes ``build_parser()`` and
``main(argv)``; adding a command is one module plus one entry in :data:`COMMANDS`. The command
modules are imported only when their command runs, so ``lightning-mix merge`` does not import
Lightning.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["COMMANDS", "main", "run_cli", "LightningMixCLI", "close_process_group"]

#: ``{command: (module, one-line summary)}``; the module has ``build_parser()`` and ``main(argv)``.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("lightning_mix.cli.lightning", "train a model (LightningCLI; --config YAML, then tests it)"),
    "validate": ("lightning_mix.cli.lightning", "run the validation loop (LightningCLI)"),
    "test": ("lightning_mix.cli.lightning", "run the test loop (LightningCLI)"),
    "predict": ("lightning_mix.cli.lightning", "run prediction (LightningCLI)"),
    "merge": ("lightning_mix.cli.merge", "merge checkpoints of one architecture (TIES, DARE, ...)"),
    "soup": ("lightning_mix.cli.soup", "average checkpoints of separate runs into a model soup"),
    "compare": ("lightning_mix.cli.compare", "run methods over seeds and compare them with intervals and paired tests"),
}
_LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: lightning-mix COMMAND [options]",
        "",
        "Mixup-family augmentation, calibration and weight averaging for PyTorch Lightning.",
        "",
        "commands:",
        *[f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()],
        "",
        "'lightning-mix COMMAND --help' describes a command's options.",
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-mix`` console script: dispatch to the command's module."""
    args = list(args) if args is not None else sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        if not args:
            raise SystemExit(2)
        return
    command = args[0]
    if command not in COMMANDS:
        print(_usage(), file=sys.stderr)
        raise SystemExit(f"lightning-mix: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[command][0])
    module.main(args if command in _LIGHTNING_COMMANDS else args[1:])


def __getattr__(name: str) -> Any:
    # LightningCLI helpers live in cli.lightning; imported on first use so merge/soup start fast
    if name in ("run_cli", "LightningMixCLI", "close_process_group"):
        return getattr(importlib.import_module("lightning_mix.cli.lightning"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
