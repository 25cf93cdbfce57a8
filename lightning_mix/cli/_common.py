"""What the ``merge`` and ``soup`` commands share: errors, input and output checks, progress, metadata."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from lightning_mix.checkpoint_io import check_output_path

__all__ = ["fail", "check_inputs_and_output", "progress_printer"]


def fail(prog: str, message: str) -> NoReturn:
    """Stop the command with ``PROG: error: MESSAGE`` on stderr and exit code 1."""
    raise SystemExit(f"{prog}: error: {message}")


def check_inputs_and_output(prog: str, inputs: Sequence[str], output: str, overwrite: bool) -> Path:
    """Refuse missing inputs, directories given as inputs and an unwritable output, before reading anything."""
    for path in inputs:
        p = Path(path)
        if p.is_dir():
            fail(prog, f"{path!r} is a directory; pass the checkpoint files inside it (e.g. {path.rstrip('/')}/*.ckpt)")
        if not p.is_file():
            fail(prog, f"checkpoint {path!r} does not exist")
    try:
        return check_output_path(output, overwrite)
    except OSError as err:
        fail(prog, str(err))


def progress_printer(prog: str, quiet: bool) -> Callable[[int, int, str], None] | None:
    """A per-tensor progress line on stderr (rewritten in place on a terminal); ``None`` when quiet."""
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def report(done: int, total: int, name: str) -> None:
        end = "\n" if (not tty or done == total) else ""
        prefix = "\r\033[K" if tty else ""
        print(f"{prefix}{prog} [{done}/{total}] {name}", end=end, file=sys.stderr, flush=True)

    return report
