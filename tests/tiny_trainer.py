"""The one factory of the small, quiet CPU Trainers that the Lightning tests build."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

__all__ = ["QUIET", "tiny_trainer"]

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


def tiny_trainer(**overrides: Any) -> pl.Trainer:
    """``pl.Trainer(**{**QUIET, **overrides})``."""
    return pl.Trainer(**{**QUIET, **overrides})
