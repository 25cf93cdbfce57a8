"""Bootstrap of 1M stored predictions with 1,000 resamples: lightning_mix.evaluation vs scipy.stats.bootstrap.

The data are 1M per-sample 0/1 correctness values (float64) of a 90%-accurate classifier; the
statistic is their mean (accuracy), percentile interval at 95%. Each measurement runs in a fresh
subprocess that reports wall time and its peak resident set size (``ru_maxrss``) minus its RSS
just before the call (data already built), so imports and the data are not counted.

- ``lightning_mix``: :func:`lightning_mix.evaluation.bootstrap_ci` with a vectorised statistic
  and its default chunking (``max_chunk_elements=2**24``: 16 resamples of 1M at a time).
- ``scipy``: ``scipy.stats.bootstrap(..., vectorized=True, method="percentile", batch=B)``.
  scipy's default ``batch=None`` draws all 1,000 x 1M int64 indices at once (8 GB, plus 8 GB of
  gathered values); ``--scipy-batch`` (default 50: 400 MB of indices) keeps it within the
  machine's memory.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_bootstrap.py [--n 1000000] [--resamples 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(which: str, n: int, resamples: int, scipy_batch: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    correct = (rng.random(n) < 0.9).astype(np.float64)
    if which == "lightning_mix":
        import torch

        from lightning_mix.evaluation import bootstrap_ci

        data = torch.from_numpy(correct)
        before = _rss_bytes()
        start = time.perf_counter()
        res = bootstrap_ci(data, lambda c: c.mean(1), n_resamples=resamples, seed=0)
        seconds = time.perf_counter() - start
        low, high = res.low, res.high
    else:
        from scipy import stats

        before = _rss_bytes()
        start = time.perf_counter()
        res = stats.bootstrap(
            (correct,),
            lambda c, axis: c.mean(axis),
            n_resamples=resamples,
            vectorized=True,
            method="percentile",
            batch=scipy_batch,
            random_state=0,
        )
        seconds = time.perf_counter() - start
        low, high = res.confidence_interval.low, res.confidence_interval.high
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"which": which, "seconds": seconds, "peak_mib": (peak - before) / 2**20, "low": low, "high": high}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--scipy-batch", type=int, default=50)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.n, args.resamples, args.scipy_batch)))
        return
    print(f"n = {args.n:,}, resamples = {args.resamples:,}, OMP_NUM_THREADS = {os.environ.get('OMP_NUM_THREADS')}")
    print("| implementation | time (s) | peak extra memory (MiB) | 95% interval |")
    print("|---|---|---|---|")
    for which in ("lightning_mix", "scipy"):
        cmd = [sys.executable, __file__, "--child", which, "--n", str(args.n), "--resamples", str(args.resamples)]
        cmd += ["--scipy-batch", str(args.scipy_batch)]
        out = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        label = which if which == "lightning_mix" else f"scipy.stats.bootstrap (batch={args.scipy_batch})"
        print(f"| {label} | {out['seconds']:.1f} | {out['peak_mib']:.0f} | [{out['low']:.5f}, {out['high']:.5f}] |")


if __name__ == "__main__":
    main()
