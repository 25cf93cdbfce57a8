"""Progress over ``lightning-mix compare``'s runs: a tqdm bar, or a line per run."""

from __future__ import annotations

import sys

__all__ = ["PROGRESS_MODES", "RunProgress"]

PROGRESS_MODES = ("auto", "bar", "lines")


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with Lightning's progress bar; without it, the lines
        return None
    return tqdm


class RunProgress:
    """Shows ``total`` runs' progress: ``begin(name)`` when a run starts, ``step(name, status)`` when it ends.

    ``mode="bar"``: one tqdm bar on stderr (completed runs, elapsed time and the estimated time
    left; the current run in its postfix); ``"lines"``: ``[k/total] name: status`` lines on
    stdout (what a log file keeps); ``"auto"``: the bar when stderr is a terminal and tqdm is
    installed, else the lines. A bar asked for without tqdm falls back to the lines.
    """

    def __init__(self, total: int, mode: str = "auto") -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress must be one of {PROGRESS_MODES}, got {mode!r}.")
        tqdm = _tqdm()
        use_bar = tqdm is not None and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.total = total
        self.done = 0
        self.bar = (
            tqdm(total=total, desc="compare", unit="run", file=sys.stderr, dynamic_ncols=True) if use_bar else None
        )

    def begin(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: running")
        else:
            print(f"[{self.done + 1}/{self.total}] {name}: running", flush=True)

    def step(self, name: str, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: {status}", refresh=False)
            self.bar.update(1)
        elif status != "done":
            print(f"[{self.done}/{self.total}] {name}: {status}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
