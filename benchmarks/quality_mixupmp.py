"""MixupMP against a deep ensemble on MNIST5k: members from ``lightning-mix compare``, ensembles by averaging.

The members are ``lightning-mix compare`` runs of ``examples/mnist5k.yaml`` (SmallCNN, AdamW with a
cosine schedule; ERM members: the deep ensemble) and of ``examples/mnist5k.yaml`` +
``examples/mixupmp_member.yaml`` (``RegMixup(alpha=1, mode="elem")``: MixupMP members), one per
seed. They are stored in the mixing study's folder (``benchmarks/studies/mixing-{EPOCHS}ep``,
methods ``erm`` and ``mixupmp``): the ERM members are the mixing study's ERM runs (the same job,
seeds and epochs), so only the MixupMP members are trained. Each ensemble is the average of its
members' stored test probabilities (what :class:`lightning_mix.modules.Ensemble` predicts with
uniform weights). Two tables, each from :func:`lightning_mix.cli.compare.compare_predictions`
(percentile bootstrap intervals over the 1000 test images, paired bootstrap differences to the
first row, Holm-adjusted p-values): the two ensembles, and the single members (means over seeds).

Usage: ``python benchmarks/quality_mixupmp.py [--seeds 0 1 2 3 4] [--epochs 30] [--output DIR]``.
Runs that the output folder already holds are not trained again. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_mix.cli import compare
from lightning_mix.cli.compare import METRICS, _format_p, compare_predictions

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"erm": [], "mixupmp": [str(ROOT / "examples" / "mixupmp_member.yaml")]}


def _stored(output: Path, method: str, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' test probabilities (S, n, C) and the labels (n,)."""
    runs = [torch.load(output / method / f"seed={s}" / "predictions.pt", weights_only=True) for s in seeds]
    return torch.stack([r["probs"] for r in runs]), runs[0]["labels"]


def _table(rows: list[dict[str, object]], baseline: str, n_resamples: int) -> str:
    cell = {(r["method"], r["metric"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for m in methods:
        values = [f"{cell[m, k]['estimate']:.4f} [{cell[m, k]['low']:.4f}, {cell[m, k]['high']:.4f}]" for k in METRICS]
        lines.append(f"| {m} | " + " | ".join(values) + " |")
    lines += ["", f"Difference to {baseline}, paired bootstrap 95% interval, p (Holm):", ""]
    lines += ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for m in methods[1:]:
        values = [
            f"{cell[m, k]['diff']:+.4f} [{cell[m, k]['diff_low']:+.4f}, {cell[m, k]['diff_high']:+.4f}] "
            f"p={_format_p(cell[m, k]['p_holm'], n_resamples, len(methods) - 1)}"
            for k in METRICS
        ]
        lines.append(f"| {m} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/studies/mixing-{epochs}ep")
    parser.add_argument("--n-resamples", type=int, default=1000)
    args = parser.parse_args()
    if args.output is None:
        args.output = ROOT / "benchmarks" / "studies" / f"mixing-{args.epochs}ep"

    argv = ["--config", str(ROOT / "examples" / "mnist5k.yaml")]
    for name, configs in METHODS.items():
        argv += ["--method", f"{name}={','.join(configs)}" if configs else name]
    argv += ["--seeds", *map(str, args.seeds), "--output", str(args.output), "--n-resamples", "10", "--"]
    argv += [f"--trainer.max_epochs={args.epochs}", "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    compare.main(argv)  # trains the members that are not stored yet

    members = {name: _stored(args.output, name, args.seeds) for name in METHODS}
    k = len(args.seeds)
    ensembles = {
        f"deep ensemble ({k} ERM members)": (
            members["erm"][0].mean(0, keepdim=True),
            members["erm"][1],
        ),
        f"MixupMP ({k} members)": (members["mixupmp"][0].mean(0, keepdim=True), members["mixupmp"][1]),
    }
    singles = {"ERM member": members["erm"], "MixupMP member": members["mixupmp"]}
    for title, predictions in (("Ensembles", ensembles), ("Single members (mean over seeds)", singles)):
        baseline = next(iter(predictions))
        rows = compare_predictions(predictions, baseline=baseline, n_resamples=args.n_resamples)
        print(f"### {title}\n\n{_table(rows, baseline, args.n_resamples)}\n")


if __name__ == "__main__":
    main()
