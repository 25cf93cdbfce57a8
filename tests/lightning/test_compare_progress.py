"""compare's progress over runs: a tqdm bar on stderr, or a line per run on stdout."""

from __future__ import annotations

import pytest

from lightning_mix.cli._run_progress import RunProgress


def _three_runs(progress: RunProgress) -> None:
    progress.step("erm seed=0", "done before, skipped")
    for name in ("erm seed=1", "mixup seed=0"):
        progress.begin(name)
        progress.step(name, "done")
    progress.close()


def test_lines_number_every_run(capsys):
    _three_runs(RunProgress(3, "lines"))
    out = capsys.readouterr().out.splitlines()
    assert out == ["[1/3] erm seed=0: done before, skipped", "[2/3] erm seed=1: running", "[3/3] mixup seed=0: running"]


def test_bar_counts_runs_on_stderr(capsys):
    _three_runs(RunProgress(3, "bar"))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "compare: 100%" in captured.err and "3/3" in captured.err and "mixup seed=0" in captured.err


def test_auto_without_a_terminal_gives_lines(capsys):
    progress = RunProgress(1, "auto")  # pytest's stderr is not a terminal
    assert progress.bar is None
    with pytest.raises(ValueError, match="progress must be one of"):
        RunProgress(1, "spinner")
