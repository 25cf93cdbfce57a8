"""What every DDP script shares: the 2-process CPU Trainer, and a clean end.

:func:`ddp_trainer` builds the quiet 2-rank ``ddp`` Trainer the scripts fit with. Every script ends
with :func:`save_and_close`: Lightning leaves a gloo process group alive until exit, where gloo's
threads can abort the finished process (exit code 134, "terminate called without an active
exception"), so the test would see the exit of teardown rather than of the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_mix.cli import close_process_group


def ddp_trainer(**options: Any) -> pl.Trainer:
    """A Trainer on 2 CPU processes under ``ddp`` with no logger, checkpoints, progress bar or summary;
    ``options`` add to or override those settings."""
    settings = dict(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**settings, **options})


def save_and_close(results: dict, out_dir: str | Path, rank: int) -> None:
    """Write ``results`` to ``out_dir/rank{rank}.pt``, then barrier and destroy the process group."""
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    close_process_group()
