r"""``lightning-mix compare``: run several methods over seeds and compare their test predictions.

Example::

    lightning-mix compare --config examples/mnist5k.yaml \\
        --method erm --method mixup=callbacks/mixup.yaml --method ema=callbacks/ema.yaml \\
        --seeds 0 1 2 3 4 --output compare-mnist5k -- --trainer.max_epochs 30

Each method is the base ``--config`` files plus its own config files (``NAME=a.yaml,b.yaml``; a
bare ``NAME`` is the base alone); several configs without a base work too. Every (method, seed)
run fits with ``--seed_everything SEED`` (arguments after ``--`` go to every run, as on the
``lightning-mix fit`` command line), then predicts the datamodule's predict split (the test split
for the demos) and stores the class probabilities and labels in
``OUTPUT/METHOD/seed=SEED/predictions.pt`` (written to a temporary file and renamed: a run either
finished or is absent). A finished run is not run again, so an interrupted comparison resumes.
``--stored`` runs nothing and reports on the predictions already stored under ``OUTPUT`` (a missing
run is an error that names it): the way to re-read a finished study, or to compare predictions
that another program stored in the same layout with :func:`store_predictions` (the merging study
of the docs does this for merged models, which no config trains).

The report (printed, and written as ``OUTPUT/results.md`` and ``OUTPUT/results.csv``) gives for
each method and metric (accuracy, NLL, ECE with 15 equal-width bins, smECE, Brier, AURC) the mean
over seeds with a percentile interval, and for each method against the baseline the paired
bootstrap of the difference, its p-value and the Holm-adjusted p-value (over the methods compared
with the baseline, per metric). ``--interval seeds-and-rows`` (the default) resamples the seeds and
the test rows (two-level bootstrap: seed-to-seed variation included; the difference is paired by
seed and row); ``--interval rows`` resamples the test rows only, the trained models held fixed.
``--cv 5x2`` instead trains each method on the 10 folds of 5 repetitions of a 2-fold split (the
DataModule's ``cv_repeat`` and ``cv_fold`` init arguments) and reports the 5x2cv paired t-test and
combined F-test against the baseline, Holm-adjusted. With matplotlib, a PNG per metric (means and
intervals) and the reliability diagrams side by side are written next to ``results.md`` and linked
from it. Progress: a tqdm bar over the runs in a terminal, a line per run otherwise.
smECE's resamples reuse the bandwidth each seed's full test predictions select (the estimate is
exact).
The module's ``predict_step`` must return class probabilities ``(B, C)``, and the predict
batches must be ``(inputs, labels, ...)``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_mix.checkpoint_io import atomic_write_path, save_checkpoint_atomically
from lightning_mix.cli._compare_cv import (
    CV_CSV_FIELDS,
    CV_SCHEMES,
    check_cv_support,
    compare_cv_predictions,
    cv_markdown,
    cv_overrides,
    cv_run_dir,
)
from lightning_mix.cli._compare_plots import write_plots
from lightning_mix.cli._compare_statistics import (
    aurc_features,
    ece_features,
    smece_features,
    vectorised_aurc,
    vectorised_ece,
    vectorised_smece,
)
from lightning_mix.cli._run_progress import PROGRESS_MODES, RunProgress
from lightning_mix.evaluation import aurc, hierarchical_bootstrap_ci, holm_correction, paired_hierarchical_bootstrap
from lightning_mix.metrics import functional as CF

__all__ = [
    "INTERVALS",
    "METRICS",
    "build_parser",
    "compare_cv_predictions",
    "compare_predictions",
    "main",
    "parse_method",
    "store_predictions",
]

METRICS = ("accuracy", "nll", "ece", "smece", "brier", "aurc")
_HIGHER_IS_BETTER = {"accuracy": True}


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-mix compare`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lightning-mix compare",
        description="Run several methods over seeds, store their test predictions, and compare them with "
        "bootstrap intervals and paired tests against a baseline. Arguments after `--` go to every run.",
    )
    parser.add_argument("--config", action="append", default=[], help="Base config file(s) shared by every method.")
    parser.add_argument(
        "--method",
        action="append",
        required=True,
        metavar="NAME[=CFG[,CFG...]]",
        help="A method: its name and the config files added to the base (repeat for each method).",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="Seeds (seed_everything); default 0 1 2 3 4, and 0 with --cv (one seed for every fold run).",
    )
    parser.add_argument(
        "--cv",
        choices=tuple(CV_SCHEMES),
        default=None,
        help="5x2: train each method on 5 repetitions of a 2-fold split of the training data (the DataModule's "
        "cv_repeat and cv_fold init arguments) and report the 5x2cv paired t-test and combined F-test.",
    )
    parser.add_argument(
        "--stored",
        action="store_true",
        help="Run nothing: report on the predictions already stored under --output (OUTPUT/METHOD/seed=SEED/"
        "predictions.pt); methods need no config, and a missing run is an error.",
    )
    parser.add_argument("--baseline", default=None, help="Method the others are tested against (default: the first).")
    parser.add_argument("--output", default="compare", help="Folder for the runs' predictions and the tables.")
    parser.add_argument("--n-resamples", type=int, default=1000, help="Bootstrap resamples of the test set.")
    parser.add_argument("--confidence-level", type=float, default=0.95)
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="bar: one tqdm progress bar over the runs (on stderr); lines: a line per run (on stdout); auto "
        "(default): the bar when stderr is a terminal and tqdm is installed, else the lines.",
    )
    parser.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        help="Write no figures (by default, with matplotlib installed: one PNG per metric and the reliability "
        "diagrams, next to results.md).",
    )
    parser.add_argument(
        "--interval",
        choices=INTERVALS,
        default="seeds-and-rows",
        help="seeds-and-rows (default): resample seeds and test rows (seed-to-seed variation included); "
        "rows: resample test rows only, the trained models held fixed.",
    )
    return parser


def parse_method(spec: str) -> tuple[str, list[str]]:
    """``"mixup=a.yaml,b.yaml"`` -> ``("mixup", ["a.yaml", "b.yaml"])``; ``"erm"`` -> ``("erm", [])``."""
    name, _, configs = spec.partition("=")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--method {spec!r}: the name must be a plain folder name, e.g. 'mixup=callbacks/mixup.yaml'.")
    return name, [c for c in configs.split(",") if c]


@dataclass(frozen=True)
class _Run:
    """One training run: a method, its label in the progress line, its seed, its extra arguments and folder."""

    method: str
    label: str
    seed: int
    overrides: list[str]
    run_dir: Path


def _run_dir(output: Path, method: str, seed: int) -> Path:
    return output / method / f"seed={seed}"


def store_predictions(
    run_dir: str | Path, probs: torch.Tensor, labels: torch.Tensor, seed: int, configs: Sequence[str] = ()
) -> Path:
    """Store one run's test predictions where ``compare`` reads them: ``run_dir/predictions.pt``.

    ``run_dir`` is ``OUTPUT/METHOD/seed=SEED`` for a seeded comparison. ``probs`` are class
    probabilities (n, C) (rows summing to one), ``labels`` the n class indices. Written to a
    temporary file and renamed, so a run is either complete or absent. Returns the file's path.
    """
    probs, labels = probs.detach().float().cpu(), labels.detach().long().cpu()
    sums_to_one = bool(torch.allclose(probs.sum(-1), torch.ones(1), atol=1e-3)) if probs.dim() == 2 else False
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0] or not sums_to_one:
        raise ValueError(
            "compare needs class probabilities (n, C) for n class labels; got "
            f"{tuple(probs.shape)} predictions for labels of shape {tuple(labels.shape)} "
            f"(rows summing to one: {sums_to_one})."
        )
    path = Path(run_dir) / "predictions.pt"
    save_checkpoint_atomically({"probs": probs, "labels": labels, "configs": list(configs), "seed": seed}, path)
    return path


def _run_one(configs: list[str], seed: int, overrides: list[str], run_dir: Path) -> None:
    """Fit one (method, seed), predict, and store probabilities and labels atomically."""
    from lightning_mix.cli.lightning import build_cli

    args = [arg for c in configs for arg in ("--config", c)]
    args += ["--seed_everything", str(seed), "--trainer.default_root_dir", str(run_dir), *overrides]
    cli = build_cli(args, run=False, save_config_callback=None)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if cli.trainer.interrupted:
        raise RuntimeError(f"The run in {run_dir} was interrupted; nothing was stored (run compare again to resume).")
    outputs = cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    probs = torch.cat([o.detach().float().cpu() for o in outputs])
    labels = []  # the predict loader is not shuffled: its first len(probs) labels are the predicted rows
    for batch in cli.datamodule.predict_dataloader():
        if sum(len(x) for x in labels) >= probs.shape[0]:
            break
        labels.append(batch[1].cpu())
    labels = torch.cat(labels)[: probs.shape[0]]
    try:
        store_predictions(run_dir, probs, labels, seed, configs)
    except ValueError as error:
        message = f"predict_step must return class probabilities (B, C) for (inputs, labels) batches: {error}"
        raise ValueError(message) from error


def _per_sample_values(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """(S, n) per-sample accuracy, NLL and Brier for probabilities (S, n, C)."""
    picked = probs.double().gather(-1, labels.expand(probs.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[-1]).double()
    return {
        "accuracy": (probs.argmax(-1) == labels).double(),
        "nll": -picked.clamp_min(1e-12).log(),
        "brier": (probs.double() - one_hot).pow(2).sum(-1),
    }


def _row_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return values.mean(1)  # (chunk, n) -> (chunk,)


def _aurc(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    confidence, predicted = probs.max(-1)
    return aurc(confidence, (predicted != labels).double())


def _ece(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return CF.calibration_error(probs, labels, n_bins=15, input="probs", validate_args=False)


def _smece_at_full_data_bandwidths(probs: torch.Tensor, labels: torch.Tensor) -> list[Callable]:
    """One vectorised SmECE statistic per seed of (S, n, C) probabilities, at the bandwidth that seed's full
    predictions select.

    The estimate equals ``smooth_ece`` exactly; resamples reuse the full-data bandwidth instead of
    searching it again (ten bisection steps, so about ten times the cost).
    """
    return [vectorised_smece(CF.smooth_ece(p, labels, input="probs", return_bandwidth=True)[1]) for p in probs]


_SAMPLE_METRICS = {  # metric: (per-row features, statistic or per-seed statistics of the features)
    "ece": (ece_features, lambda probs, labels: vectorised_ece),
    "smece": (smece_features, _smece_at_full_data_bandwidths),
    "aurc": (aurc_features, lambda probs, labels: vectorised_aurc),
}
INTERVALS = ("seeds-and-rows", "rows")


def _prepare(metric: str, probs: torch.Tensor, labels: torch.Tensor):
    """(data (S, n, ...) resampled by seed and row, statistic(s), vectorized) of one metric."""
    if metric in _SAMPLE_METRICS:
        features, statistics = _SAMPLE_METRICS[metric]
        return features(probs, labels), statistics(probs, labels), True
    return _per_sample_values(probs, labels)[metric], _row_mean, True


def compare_predictions(
    predictions: dict[str, tuple[torch.Tensor, torch.Tensor]],
    baseline: str,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    interval: str = "seeds-and-rows",
) -> list[dict[str, object]]:
    """Rows of the comparison table from ``{method: (probs (S, n, C), labels (n,))}``.

    Each row: ``method``, ``metric``, ``estimate``, ``low``, ``high`` (seed-mean and interval),
    ``seeds``, and for non-baseline methods ``diff``, ``diff_low``, ``diff_high``, ``p_value``,
    ``p_holm`` (method minus baseline). ``interval="seeds-and-rows"`` (the default) resamples the
    seeds and the test rows (:func:`~lightning_mix.evaluation.hierarchical_bootstrap_ci`; the
    difference is paired by seed index and by row, so every method needs the same number of seeds,
    seed ``s`` of each method being the same ``seed_everything`` value); ``interval="rows"``
    resamples the test rows only, for the seed-averaged metric (the S trained models held fixed).
    """
    if baseline not in predictions:
        raise ValueError(f"baseline {baseline!r} is not among the methods {list(predictions)}.")
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}.")
    labels = predictions[baseline][1]
    seeds = predictions[baseline][0].shape[0]
    for method, (method_probs, method_labels) in predictions.items():
        if not torch.equal(method_labels, labels):
            raise ValueError(
                f"Method {method!r} was tested on other labels than {baseline!r}: paired tests need one test set."
            )
        if method_probs.dim() != 3 or method_probs.shape[:2] != (seeds, labels.shape[0]):
            raise ValueError(
                f"Method {method!r}: probabilities must have shape (seeds, samples, classes) = ({seeds}, "
                f"{labels.shape[0]}, C) like the baseline's (pairs are by seed index), got {tuple(method_probs.shape)}."
            )
    options = {
        "n_resamples": n_resamples,
        "confidence_level": confidence_level,
        "seed": seed,
        "resample_seeds": interval == "seeds-and-rows",
    }
    expanded = labels.expand(seeds, -1)
    rows = []
    for metric in METRICS:
        diffs = {}
        prepared = {method: _prepare(metric, probs, labels) for method, (probs, _) in predictions.items()}
        base_data, base_stat, _ = prepared[baseline]
        for method in predictions:
            data, stat, vectorized = prepared[method]
            ci = hierarchical_bootstrap_ci((data, expanded), stat, vectorized=vectorized, **options)
            row = {"method": method, "metric": metric, "estimate": ci.estimate, "low": ci.low, "high": ci.high}
            row["seeds"] = seeds
            if method != baseline:
                diffs[method] = paired_hierarchical_bootstrap(
                    stat, data, base_data, expanded, vectorized=vectorized, metric_b=base_stat, **options
                )
            rows.append(row)
        if diffs:
            adjusted = holm_correction([d.p_value for d in diffs.values()]).tolist()
            for (method, d), p_holm in zip(diffs.items(), adjusted):
                row = next(r for r in rows if r["method"] == method and r["metric"] == metric)
                row.update(diff=d.estimate, diff_low=d.low, diff_high=d.high, p_value=d.p_value, p_holm=p_holm)
    return rows


_INTERVAL_TEXT = {
    "seeds-and-rows": "two-level bootstrap interval over seeds and test samples",
    "rows": "bootstrap interval over test samples (seeds held fixed)",
}


def _format_p(p: float, n_resamples: int, tests: int = 1) -> str:
    """A bootstrap p-value as text. 0 (no resample crossed zero) is shown as the bound it stands for:
    ``<2/n`` for one test, ``<tests * 2/n`` for a Holm-adjusted value over ``tests`` comparisons.
    """
    return f"<{min(1.0, 2 * tests / n_resamples):.2g}" if p == 0 else f"{p:.3g}"


def _markdown(
    rows: list[dict[str, object]], baseline: str, confidence_level: float, interval: str, n_resamples: int = 1000
) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["metric"]): r for r in rows}
    level = f"{100 * confidence_level:g}%"
    lines = [
        f"Mean over seeds, {level} {_INTERVAL_TEXT[interval]}:",
        "",
        "| method | seeds | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for m in methods:
        values = [f"{cell[m, k]['estimate']:.4f} [{cell[m, k]['low']:.4f}, {cell[m, k]['high']:.4f}]" for k in METRICS]
        lines.append(f"| {m} | {cell[m, METRICS[0]]['seeds']} | " + " | ".join(values) + " |")
    others = [m for m in methods if m != baseline]
    if others:
        lines += [
            "",
            f"Difference to the baseline ({baseline}), paired {level} {_INTERVAL_TEXT[interval]}"
            " (paired by seed and row), p-value (Holm-adjusted):",
            "",
            "| method | " + " | ".join(METRICS) + " |",
            "|---|" + "---|" * len(METRICS),
        ]
        for m in others:
            values = [
                f"{cell[m, k]['diff']:+.4f} [{cell[m, k]['diff_low']:+.4f}, {cell[m, k]['diff_high']:+.4f}] "
                f"p={_format_p(cell[m, k]['p_value'], n_resamples)} "
                f"({_format_p(cell[m, k]['p_holm'], n_resamples, len(others))})"
                for k in METRICS
            ]
            lines.append(f"| {m} | " + " | ".join(values) + " |")
    lines += ["", "Accuracy: higher is better; NLL, ECE, smECE, Brier, AURC: lower is better."]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write_path(path) as tmp:
        tmp.write_text(text)


def _csv_text(rows: list[dict[str, object]], fields: list[str] | None = None) -> str:
    import io

    fields = fields or [
        "method",
        "metric",
        "seeds",
        "estimate",
        "low",
        "high",
        "diff",
        "diff_low",
        "diff_high",
        "p_value",
        "p_holm",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Run ``lightning-mix compare`` with ``argv`` (without the ``compare`` word); returns the table rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    methods = dict(parse_method(spec) for spec in args.method)
    if len(methods) != len(args.method):
        raise ValueError(f"Method names must be unique, got {[parse_method(s)[0] for s in args.method]}.")
    baseline = args.baseline or next(iter(methods))
    if baseline not in methods:
        raise ValueError(f"--baseline {baseline!r} is not one of the methods {list(methods)}.")
    if args.n_resamples < 2 or not 0 < args.confidence_level < 1:
        raise ValueError("--n-resamples must be at least 2 and --confidence-level in (0, 1).")
    for name, extra in methods.items():
        configs = args.config + extra
        if args.stored:
            continue
        if not configs:
            raise ValueError(f"Method {name!r} has no config: give --config and/or {name}=FILE.yaml.")
        missing = [c for c in configs if not Path(c).is_file()]
        if missing:
            raise FileNotFoundError(f"Method {name!r}: config file(s) not found: {missing}.")
    output = Path(args.output)
    if args.cv:
        seeds = args.seeds or [0]
        if len(seeds) != 1:
            raise ValueError(f"--cv {args.cv} runs each fold once: give one seed (e.g. --seeds 0), got {seeds}.")
        for name, extra in methods.items():
            if not args.stored:
                check_cv_support(name, args.config + extra, overrides)
        repeats, folds = CV_SCHEMES[args.cv]
        runs = [
            _Run(name, f"repeat={i} fold={f}", seeds[0], cv_overrides(i, f), cv_run_dir(output, name, i, f))
            for name in methods
            for i in range(repeats)
            for f in range(folds)
        ]
    else:
        seeds = args.seeds or [0, 1, 2, 3, 4]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds must be distinct, got {seeds}.")
        runs = [
            _Run(name, f"seed={seed}", seed, [], _run_dir(output, name, seed)) for name in methods for seed in seeds
        ]
    if args.stored:
        missing = [str(run.run_dir) for run in runs if not (run.run_dir / "predictions.pt").is_file()]
        if missing:
            raise FileNotFoundError(
                f"--stored runs nothing, but {len(missing)} run(s) have no predictions.pt: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}. Run compare without --stored to train them, or give only "
                "the methods and seeds that are stored."
            )
    progress = RunProgress(0 if args.stored else len(runs), args.progress)
    try:
        for run in [] if args.stored else runs:
            if (run.run_dir / "predictions.pt").is_file():
                progress.step(f"{run.method} {run.label}", "done before, skipped")
                continue
            progress.begin(f"{run.method} {run.label}")
            _run_one(args.config + methods[run.method], run.seed, [*overrides, *run.overrides], run.run_dir)
            progress.step(f"{run.method} {run.label}", "done")
    finally:
        progress.close()
    if args.cv:
        rows = _report_cv(runs, methods, baseline, output, args.plots)
    else:
        rows = _report_seeds(runs, methods, baseline, output, args)
    return rows


def _load(run: _Run) -> dict:
    return torch.load(run.run_dir / "predictions.pt", weights_only=True)


def _plot_links(written: list[str]) -> str:
    if not written:
        return ""
    lines = ["", "Figures:", ""] + [f"![{Path(name).stem}]({name})" for name in written]
    return "\n".join(lines) + "\n"


def _write_report(
    output: Path,
    markdown: str,
    csv_text: str,
    rows: list[dict[str, object]],
    pooled: dict[str, tuple[torch.Tensor, torch.Tensor]],
    interval_label: str,
    plots: bool,
) -> None:
    output.mkdir(parents=True, exist_ok=True)
    if plots:  # the figures first, so that every link in results.md points to a file
        markdown += _plot_links(write_plots(rows, pooled, output, METRICS, interval_label))
    _write_atomic(output / "results.md", markdown)
    _write_atomic(output / "results.csv", csv_text)
    print(markdown, end="")


def _report_seeds(runs: list[_Run], methods, baseline: str, output: Path, args) -> list[dict[str, object]]:
    predictions = {}
    for name in methods:
        stored = [_load(run) for run in runs if run.method == name]
        predictions[name] = (torch.stack([s["probs"] for s in stored]), stored[0]["labels"])
    rows = compare_predictions(
        predictions, baseline, args.n_resamples, args.confidence_level, args.bootstrap_seed, args.interval
    )
    pooled = {
        name: (probs.reshape(-1, probs.shape[-1]), labels.repeat(probs.shape[0]))
        for name, (probs, labels) in predictions.items()
    }
    label = f"{100 * args.confidence_level:g}% {_INTERVAL_TEXT[args.interval]}"
    markdown = _markdown(rows, baseline, args.confidence_level, args.interval, args.n_resamples)
    _write_report(output, markdown, _csv_text(rows), rows, pooled, label, args.plots)
    return rows


def _report_cv(runs: list[_Run], methods, baseline: str, output: Path, plots: bool) -> list[dict[str, object]]:
    repeats, folds = CV_SCHEMES["5x2"]
    predictions = {}
    for name in methods:
        stored = [_load(run) for run in runs if run.method == name]  # ordered by repetition, then fold
        predictions[name] = [
            [(stored[i * folds + f]["probs"], stored[i * folds + f]["labels"]) for f in range(folds)]
            for i in range(repeats)
        ]
    rows = compare_cv_predictions(predictions, baseline)
    pooled = {
        name: (torch.cat([p for rep in table for p, _ in rep]), torch.cat([t for rep in table for _, t in rep]))
        for name, table in predictions.items()
    }
    label = "standard deviation over the 10 held-out halves"
    _write_report(output, cv_markdown(rows, baseline), _csv_text(rows, CV_CSV_FIELDS), rows, pooled, label, plots)
    return rows


if __name__ == "__main__":
    main()
