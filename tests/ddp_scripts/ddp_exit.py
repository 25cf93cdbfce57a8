"""Save a rank's results and shut its process group down before the interpreter exits.

Lightning leaves a gloo process group alive until exit, where gloo's threads can abort the
finished process (exit code 134, "terminate called without an active exception"). Every DDP
script ends with :func:`save_and_close` so the test sees the exit of the work, not of teardown.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_mix.cli import close_process_group


def save_and_close(results: dict, out_dir: str | Path, rank: int) -> None:
    """Write ``results`` to ``out_dir/rank{rank}.pt``, then barrier and destroy the process group."""
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    close_process_group()
