"""Reliability-diagram figure. Matplotlib is an optional extra, imported only when a figure is drawn."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PLOT_EXTRA_HINT", "plot_reliability_diagram", "require_matplotlib"]

PLOT_EXTRA_HINT = "pip install lightning-mix[plot]"


def require_matplotlib() -> Any:
    """Import matplotlib (Agg-safe, no pyplot) or raise an ImportError that names the extra to install."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"Reliability diagrams need matplotlib, which is not installed: run `{PLOT_EXTRA_HINT}` "
            "(or pass plot=False)."
        ) from err
    return matplotlib


def plot_reliability_diagram(diagram: dict[str, torch.Tensor], ax: Any = None, title: str | None = None):
    """Draw a reliability diagram from :func:`~lightning_mix.metrics.functional.reliability_diagram` data.

    Top panel: accuracy per bin (bars), the gap to the bin's mean confidence (red, hatched) and
    the diagonal of perfect calibration, with the ECE in the legend. Bottom panel: how many
    samples fall in each confidence bin. With ``ax`` given, only the top panel is drawn on it.
    Returns ``(figure, axes)``; the figure is a plain ``matplotlib.figure.Figure`` (no pyplot
    state), so it can be saved or logged from any thread and needs no ``plt.close``.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    edges = diagram["bin_edges"].detach().cpu().double().numpy()
    acc = diagram["accuracy"].detach().cpu().double().numpy()
    conf = diagram["confidence"].detach().cpu().double().numpy()
    count = diagram["count"].detach().cpu().double().numpy()
    ece = float(diagram["ece"]) if "ece" in diagram else None
    left, width = edges[:-1], edges[1:] - edges[:-1]
    filled = count > 0

    if ax is None:
        fig = Figure(figsize=(4.5, 5.5), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        fig, top, bottom = ax.figure, ax, None

    top.bar(
        left[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    gap_base = acc[filled]
    gap = conf[filled] - acc[filled]
    top.bar(
        left[filled],
        gap,
        bottom=gap_base,
        width=width[filled],
        align="edge",
        color="tab:red",
        alpha=0.35,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.5,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", title=None if ece is None else f"ECE = {100 * ece:.2f}%")
    if title:
        top.set_title(title)
    if bottom is not None:
        total = max(count.sum(), 1.0)
        bottom.bar(left, count / total, width=width, align="edge", color="tab:gray", edgecolor="black", linewidth=0.5)
        mean_conf = float((conf * count).sum() / total)
        mean_acc = float((acc * count).sum() / total)
        bottom.axvline(mean_conf, color="tab:red", linewidth=1, label=f"mean confidence {mean_conf:.3f}")
        bottom.axvline(mean_acc, color="tab:blue", linewidth=1, linestyle=":", label=f"accuracy {mean_acc:.3f}")
        bottom.set_xlabel("confidence")
        bottom.set_ylabel("fraction")
        bottom.legend(fontsize="small", loc="upper left")
        return fig, (top, bottom)
    top.set_xlabel("confidence")
    return fig, top
