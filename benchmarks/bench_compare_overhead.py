"""`lightning-mix compare`'s cost per run against a plain `lightning-mix fit` + `lightning-mix test` of one config.

For each repeat (interleaved, so both sides see the same machine load):

- plain: for each seed, `lightning-mix fit --config examples/mnist5k.yaml <tiny> --seed_everything S`
  then `lightning-mix test` of the same config on the checkpoint that fit wrote (two processes, as a
  user runs them);
- compare: `lightning-mix compare --config examples/mnist5k.yaml --method erm --seeds <seeds> -- <tiny>`
  (one process: every run fits and predicts the test split, then the report), and the same command
  again, which finds every run done and only loads the predictions and writes the report.

Prints the median seconds of each, the per-run ratio of compare's runs (first command minus the
resumed one, per seed) to fit + test, and the ratio with the report included.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_compare_overhead.py --repeats 3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
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


def _cli(*args: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lightning_mix.cli", *args], check=True, env=env, cwd=ROOT, capture_output=True
    )
    return time.perf_counter() - start


def _plain(seed: int, folder: Path) -> float:
    config = str(ROOT / "examples" / "mnist5k.yaml")
    root = folder / f"plain-seed{seed}"
    seconds = _cli(
        "fit", "--config", config, *TINY, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root)
    )
    checkpoint = next(root.rglob("*.ckpt"))
    seconds += _cli(
        "test", "--config", config, *TINY, "--ckpt_path", str(checkpoint), "--trainer.default_root_dir", str(root)
    )
    return seconds


def _compare(seeds: list[int], folder: Path, resamples: int) -> float:
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
            plain.append(sum(_plain(seed, folder) for seed in args.seeds))
            first.append(_compare(args.seeds, folder, args.resamples))
            resumed.append(_compare(args.seeds, folder, args.resamples))
        print(
            f"repeat {repeat}: plain {plain[-1]:.1f}s, compare {first[-1]:.1f}s, resumed {resumed[-1]:.1f}s", flush=True
        )
    k = len(args.seeds)
    p, c, r = (statistics.median(x) for x in (plain, first, resumed))
    print(f"\nmedian over {args.repeats} repeats, {k} seeds, {args.resamples} resamples:")
    print(f"plain fit + test per run:            {p / k:.2f} s")
    print(f"compare per run (runs only):         {(c - r) / k:.2f} s  ratio {(c - r) / p:.3f}")
    print(f"compare per run (report included):   {c / k:.2f} s  ratio {c / p:.3f}")
    print(f"compare report alone (resumed call): {r:.2f} s")


if __name__ == "__main__":
    main()
