"""Run a script under Lightning's DDP strategy with 2 CPU processes and collect what each rank saved.

Lightning's ``ddp`` launcher re-executes ``sys.argv`` for the other ranks, which does not work from
inside pytest; a standalone script does. Each script takes an output directory as its first
argument and writes ``rank{r}.pt`` files there; the test loads and compares them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPTS = Path(__file__).parent / "scripts"
LIGHTNING_TESTS = Path(__file__).parents[1] / "lightning"


def run_ddp_script(name: str, out_dir: Path, *args: str, timeout: int = 300) -> list[dict]:
    """Run ``tests/ddp/scripts/<name>`` with ``out_dir`` and ``args``; return each rank's saved dict."""
    env = dict(os.environ)
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SCRIPTS), str(SCRIPTS.parent), str(LIGHTNING_TESTS), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), str(out_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(out_dir),
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"DDP script {name} failed (exit code {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    results = []
    for rank in range(2):
        path = Path(out_dir) / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote nothing:\n{proc.stderr[-4000:]}"
        results.append(torch.load(path, weights_only=False))
    return results
