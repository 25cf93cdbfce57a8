"""`lightning-mix compare`'s cost per run against a plain `lightning-mix fit` + `lightning-mix test` of one config.

For each repeat (interleaved, so both sides see the same machine load):

- plain: for each seed, `lightning-mix fit --config examples/mnist5k.yaml <tiny> --seed_everything S`,
  which fits and then tests on the test split in one process (its default `--test_after_fit true`;
  a separate `lightning-mix test` process would add a second start-up and a second test pass, so
  this is the cheaper, stricter baseline);
- compare: `lightning-mix compare --config examples/mnist5k.yaml --method erm --seeds <seeds> -- <tiny>`
  (one process: every run fits and predicts the test split, then the report), and the same command
  again, which finds every run done and only loads the predictions and writes the report.

Prints the median wall-clock seconds and CPU seconds (user + system of the child processes) of each,
the per-run ratio of compare's runs (first command minus the resumed one) to fit + test, and the
ratio with the report included. On a shared machine the CPU seconds are the steadier figure.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_compare_overhead.py --repeats 3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "8",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.logger",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--model.init_args.width",
    "8",
]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(*args: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``lightning-mix`` process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    cpu, start = _cpu_seconds(), time.perf_counter()
    command = [sys.executable, "-m", "lightning_mix.cli", *args]
    subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def _plain(seed: int, folder: Path) -> tuple[float, float]:
    config = str(ROOT / "examples" / "mnist5k.yaml")
    root = str(folder / f"plain-seed{seed}")
    return _cli("fit", "--config", config, *TINY, "--seed_everything", str(seed), "--trainer.default_root_dir", root)


def _compare(seeds: list[int], folder: Path, resamples: int) -> tuple[float, float]:
    args = ["compare", "--config", str(ROOT / "examples" / "mnist5k.yaml"), "--method", "erm"]
    args += ["--seeds", *map(str, seeds), "--output", str(folder / "compare"), "--no-plots", "--progress", "lines"]
    args += ["--n-resamples", str(resamples), "--", *TINY]
    return _cli(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    plain, first, resumed = [], [], []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            runs = [_plain(seed, folder) for seed in args.seeds]
            plain.append((sum(w for w, _ in runs), sum(c for _, c in runs)))
            first.append(_compare(args.seeds, folder, args.resamples))
            resumed.append(_compare(args.seeds, folder, args.resamples))
        print(
            f"repeat {repeat} (wall s, CPU s): plain {plain[-1][0]:.1f}, {plain[-1][1]:.1f}; compare "
            f"{first[-1][0]:.1f}, {first[-1][1]:.1f}; resumed {resumed[-1][0]:.1f}, {resumed[-1][1]:.1f}",
            flush=True,
        )
    k = len(args.seeds)
    print(f"\nmedian over {args.repeats} repeats, {k} seeds, {args.resamples} resamples:")
    for which, index in (("wall", 0), ("CPU", 1)):
        p, c, r = (statistics.median(x[index] for x in runs) for runs in (plain, first, resumed))
        print(f"[{which}] plain fit + test per run:            {p / k:.2f} s")
        print(f"[{which}] compare per run (runs only):         {(c - r) / k:.2f} s  ratio {(c - r) / p:.3f}")
        print(f"[{which}] compare per run (report included):   {c / k:.2f} s  ratio {c / p:.3f}")
        print(f"[{which}] compare report alone (resumed call): {r:.2f} s")


if __name__ == "__main__":
    main()
