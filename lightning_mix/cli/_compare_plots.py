"""``lightning-mix compare``'s figures: each metric's per-method estimate with its interval, and reliability diagrams.

Matplotlib is the ``plot`` extra; without it the figures are skipped with one warning and the tables
are written as usual. Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state) saved
atomically (temporary file, then rename) next to ``results.md``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lightning_mix.checkpoint_io import atomic_write_path
from lightning_mix.metrics.functional import reliability_diagram
from lightning_mix.metrics.plot import PLOT_EXTRA_HINT, plot_reliability_diagram, require_matplotlib

__all__ = ["RELIABILITY_FILE", "metric_figure", "metric_plot_file", "reliability_figure", "write_plots"]

RELIABILITY_FILE = "reliability_diagrams.png"
_LOWER_IS_BETTER = {"nll", "ece", "smece", "brier", "aurc"}


def metric_plot_file(metric: str) -> str:
    return f"plot_{metric}.png"


def metric_figure(rows: list[dict[str, object]], metric: str, interval_label: str):
    """One horizontal bar per method from ``low`` to ``high`` (or the estimate ± ``sd``), and the estimate.

    A bar is drawn where the interval lies, even when it does not contain the estimate: a percentile
    bootstrap interval of a biased metric (ECE is biased upwards under resampling) can sit above it.
    """
    from matplotlib.figure import Figure

    cells = [r for r in rows if r["metric"] == metric]
    methods = [str(r["method"]) for r in cells]
    estimates = [float(r["estimate"]) for r in cells]
    if all("low" in r for r in cells):
        lows = [float(r["low"]) for r in cells]
        highs = [float(r["high"]) for r in cells]
    else:  # 5x2cv rows: mean and standard deviation over the held-out halves
        lows = [e - float(r["sd"]) for e, r in zip(estimates, cells)]
        highs = [e + float(r["sd"]) for e, r in zip(estimates, cells)]
    fig = Figure(figsize=(5.0, 0.6 * len(methods) + 1.4), layout="constrained")
    ax = fig.subplots()
    positions = list(range(len(methods)))[::-1]  # first method on top
    ax.plot(estimates, positions, "o", color="tab:blue")
    ax.hlines(positions, lows, highs, color="tab:blue")
    ax.plot(lows + highs, positions + positions, "|", color="tab:blue", markersize=10)  # the bars' ends
    ax.set_yticks(positions, methods)
    ax.set_ylim(-0.6, len(methods) - 0.4)
    better = "lower is better" if metric in _LOWER_IS_BETTER else "higher is better"
    ax.set_xlabel(f"{metric} ({better}); bars: {interval_label}")
    ax.grid(axis="x", alpha=0.3)
    return fig


def reliability_figure(pooled: dict[str, tuple[torch.Tensor, torch.Tensor]], n_bins: int = 15):
    """Reliability diagrams side by side, one panel per method, of ``{method: (probs (N, C), labels (N,))}``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(pooled), 3.8), layout="constrained")
    axes = fig.subplots(1, len(pooled), sharey=True, squeeze=False)[0]
    for ax, (method, (probs, labels)) in zip(axes, pooled.items()):
        diagram = reliability_diagram(probs.double(), labels, n_bins=n_bins, input="probs")
        plot_reliability_diagram(diagram, ax=ax, title=method)
    return fig


def _save(fig, path: Path) -> None:
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_plots(
    rows: list[dict[str, object]],
    pooled: dict[str, tuple[torch.Tensor, torch.Tensor]],
    output: Path,
    metrics: tuple[str, ...],
    interval_label: str,
) -> list[str]:
    """Write one PNG per metric and the reliability diagrams into ``output``; return the file names written.

    Without matplotlib: one warning naming the extra, and nothing written.
    """
    try:
        require_matplotlib()
    except ImportError:
        warnings.warn(
            f"lightning-mix compare: matplotlib is not installed, so no plots were written (the tables were); "
            f"`{PLOT_EXTRA_HINT}` adds them.",
            stacklevel=2,
        )
        return []
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        _save(metric_figure(rows, metric, interval_label), output / metric_plot_file(metric))
        written.append(metric_plot_file(metric))
    _save(reliability_figure(pooled), output / RELIABILITY_FILE)
    written.append(RELIABILITY_FILE)
    return written
