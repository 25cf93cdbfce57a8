"""The one factory of the small, quiet CPU Trainers that the Lightning tests build."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

__all__ = ["QUIET", "TINY_CLI", "tiny_trainer"]

#: What every test Trainer shares: one CPU device, no logger, checkpoint, progress bar, summary or
#: sanity check (each test turns on what it checks).
QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}

#: The same for a ``lightning-mix fit`` command line: two batches of each loop, one epoch, no test
#: after fit. (Two, not one: the CLI reads ``limit_train_batches=1`` as the float 1.0, the whole loader.)
TINY_CLI: list[str] = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--test_after_fit=false",
]


def tiny_trainer(**overrides: Any) -> pl.Trainer:
    """``pl.Trainer(**{**QUIET, **overrides})``."""
    return pl.Trainer(**{**QUIET, **overrides})
