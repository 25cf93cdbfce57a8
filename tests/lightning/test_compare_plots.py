"""compare's figures: the plotted estimates and bars are the table's, the reliability panels are the pooled bins."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch

from lightning_mix.cli import _compare_plots, compare


def _rows():
    return [
        {"method": "erm", "metric": "nll", "estimate": 0.30, "low": 0.25, "high": 0.37},
        {"method": "mixup", "metric": "nll", "estimate": 0.28, "low": 0.20, "high": 0.31},
    ]


def _predictions(seed: int, n: int = 400, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    probs = (torch.randn(n, c, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, c)).softmax(-1)
    return probs, labels


def test_metric_figure_draws_each_estimate_with_its_interval():
    fig = _compare_plots.metric_figure(_rows(), "nll", "95% interval")
    ax = fig.axes[0]
    points = ax.lines[0]
    assert list(points.get_xdata()) == pytest.approx([0.30, 0.28])
    assert list(points.get_ydata()) == [1, 0]  # first method on top
    segments = ax.collections[0].get_segments()  # the horizontal error bars
    assert [tuple(s[:, 0]) for s in segments] == [pytest.approx((0.25, 0.37)), pytest.approx((0.20, 0.31))]
    ticks = dict(zip(ax.get_yticks().tolist(), [t.get_text() for t in ax.get_yticklabels()]))
    assert ticks == {1: "erm", 0: "mixup"}
    assert "lower is better" in ax.get_xlabel()


def test_metric_figure_draws_an_interval_that_does_not_contain_its_estimate():
    # a percentile bootstrap interval of ECE can lie above the point estimate (ECE is biased upwards);
    # the bar is drawn where the interval is, not refused
    rows = [{"method": "erm", "metric": "ece", "estimate": 0.0125, "low": 0.0131, "high": 0.0220}]
    ax = _compare_plots.metric_figure(rows, "ece", "95% interval").axes[0]
    assert list(ax.lines[0].get_xdata()) == pytest.approx([0.0125])
    assert [tuple(s[:, 0]) for s in ax.collections[0].get_segments()] == [pytest.approx((0.0131, 0.0220))]


def test_metric_figure_of_5x2cv_rows_draws_the_mean_plus_and_minus_one_sd():
    rows = [{"method": "erm", "metric": "accuracy", "estimate": 0.9, "sd": 0.02}]
    ax = _compare_plots.metric_figure(rows, "accuracy", "± 1 sd").axes[0]
    assert [tuple(s[:, 0]) for s in ax.collections[0].get_segments()] == [pytest.approx((0.88, 0.92))]


def test_reliability_panels_show_each_methods_pooled_bin_accuracy():
    pooled = {"erm": _predictions(0), "mixup": _predictions(1)}
    fig = _compare_plots.reliability_figure(pooled, n_bins=10)
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["erm", "mixup"]
    for ax, (probs, labels) in zip(fig.axes, pooled.values()):
        conf, pred = probs.max(-1)
        bins = (conf * 10).long().clamp(0, 9)  # equal-width bins: floor(conf * n_bins), 1.0 in the last
        expected = [
            float((pred[bins == b] == labels[bins == b]).double().mean()) for b in range(10) if (bins == b).any()
        ]
        heights = [patch.get_height() for patch in ax.patches[: len(expected)]]  # the accuracy bars come first
        assert heights == pytest.approx(expected)


def test_plots_are_written_and_linked_or_skipped_with_one_warning(tmp_path, monkeypatch):
    rows = [dict(r, metric=m) for m in compare.METRICS for r in _rows()]
    pooled = {"erm": _predictions(0), "mixup": _predictions(1)}
    written = _compare_plots.write_plots(rows, pooled, tmp_path, compare.METRICS, "95% interval")
    assert written == [f"plot_{m}.png" for m in compare.METRICS] + ["reliability_diagrams.png"]
    image = matplotlib.image.imread(tmp_path / "reliability_diagrams.png")
    assert image.shape[1] > image.shape[0]  # two panels side by side
    assert not list(tmp_path.glob("*.tmp*"))
    assert "![plot_nll](plot_nll.png)" in compare._plot_links(written)

    def missing():
        raise ImportError("no matplotlib")

    monkeypatch.setattr(_compare_plots, "require_matplotlib", missing)
    with pytest.warns(UserWarning, match=r"matplotlib is not installed.*lightning-mix\[plot\]") as record:
        assert _compare_plots.write_plots(rows, pooled, tmp_path / "none", compare.METRICS, "x") == []
    assert len(record) == 1 and not (tmp_path / "none").exists()
    assert compare._plot_links([]) == ""
