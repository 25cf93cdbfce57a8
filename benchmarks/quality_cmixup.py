"""C-Mixup on the embedded diabetes data: the authors' version against the in-batch one, test RMSE over seeds.

    OMP_NUM_THREADS=1 python benchmarks/quality_cmixup.py                      # 10 seeds, 40 epochs
    OMP_NUM_THREADS=1 python benchmarks/quality_cmixup.py --seeds 0 1 --epochs 5 --json out.json

Same model (``MLPRegressor(hidden=64, depth=2, lr=3e-3)``, AdamW), same split (``DiabetesDataModule``
seed 0, 310 training samples, standardised targets), same alpha (2) and bandwidth for all:

- ERM: no mixing (context);
- in-batch: ``MixingCallback(Mixup(alpha=2, mode="elem", pairing="label_kernel", bandwidth=s), regression=True)``,
  partner among the other samples of the batch, one lam per sample; 10 batches of <= 32 per epoch;
- authors': ``CMixup(alpha=2)`` with ``CMixupDataModule(..., bandwidth=s)``, partner from the whole
  training set (itself included), one lam per batch; 9 batches of 32 per epoch (``drop_last``, as the authors).

Seed ``k`` seeds the initial weights (``seed_everything(k)``), the loader order and the mixing draws, so the
methods are paired by seed. Test RMSE of the final weights (standardised units; no model selection).
Reports mean, a 95% t-interval over seeds and a paired t-test (and Wilcoxon signed-rank) per pair of methods.

    OMP_NUM_THREADS=1 python benchmarks/quality_cmixup.py --sampler-timing   # cost of one batch of partner draws

times ``CMixupBatchSampler`` alone (median over 20 batches of 128 anchors, one thread, scalar labels) for
training sets of 1 000 to 50 000 samples.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from scipy import stats

from lightning_mix.callbacks import CMixup, MixingCallback
from lightning_mix.data import CMixupDataModule
from lightning_mix.demos import DiabetesDataModule, MLPRegressor
from lightning_mix.mixing import CMixupBatchSampler, Mixup

from _harness import quiet_trainer


def _setup(method: str, seed: int, bandwidth: float):
    data = DiabetesDataModule(batch_size=32, seed=0)
    if method == "ERM":
        return data, []
    if method == "in-batch":
        mixer = Mixup(alpha=2.0, mode="elem", pairing="label_kernel", bandwidth=bandwidth)
        return data, [MixingCallback(mixer, seed=seed, regression=True)]
    if method == "authors'":
        return CMixupDataModule(data, bandwidth=bandwidth, seed=seed), [CMixup(alpha=2.0, seed=seed)]
    raise ValueError(method)


def run(method: str, seed: int, epochs: int, bandwidth: float) -> float:
    pl.seed_everything(seed, verbose=False)
    model = MLPRegressor(hidden=64, depth=2, lr=3e-3)
    data, callbacks = _setup(method, seed, bandwidth)
    quiet_trainer(
        devices=1,
        max_epochs=epochs,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    ).fit(model, datamodule=data)
    inner = data.datamodule if isinstance(data, CMixupDataModule) else data
    model.eval()
    with torch.no_grad():
        x, y = inner.test_set.tensors
        return F.mse_loss(model(x).reshape(y.shape), y).sqrt().item()


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def sampler_timing(sizes=(1_000, 10_000, 50_000), batch_size: int = 128, batches: int = 20) -> None:
    print("| training samples N | ms per batch of 128 anchors (median) |")
    print("|---|---|")
    for n in sizes:
        labels = torch.randn(n, generator=torch.Generator().manual_seed(0))
        iterator = iter(CMixupBatchSampler(labels, batch_size, bandwidth=0.5, seed=0))
        next(iterator)  # warm-up
        times = []
        for _ in range(min(batches, n // batch_size - 1)):
            start = time.perf_counter()
            next(iterator)
            times.append(time.perf_counter() - start)
        print(f"| {n} | {1000 * statistics.median(times):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--bandwidth", type=float, default=0.5, help="kernel width, standardised target units")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--sampler-timing", action="store_true", help="only time the batch sampler")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.sampler_timing:
        sampler_timing()
        return
    methods = ["ERM", "in-batch", "authors'"]
    rmse = {m: [run(m, s, args.epochs, args.bandwidth) for s in args.seeds] for m in methods}
    print(f"\nDiabetes, {len(args.seeds)} seeds, {args.epochs} epochs, alpha 2, bandwidth {args.bandwidth}")
    print("| method | test RMSE mean | 95% t-interval |")
    print("|---|---|---|")
    for m in methods:
        mean, lo, hi = t_interval(rmse[m])
        print(f"| {m} | {mean:.4f} | [{lo:.4f}, {hi:.4f}] |")
    print("\n| comparison | mean difference (95% t-interval) | paired t-test p | Wilcoxon p | wins |")
    print("|---|---|---|---|---|")
    pairs = [("authors'", "in-batch"), ("authors'", "ERM"), ("in-batch", "ERM")]
    tests = {}
    for a, b in pairs:
        diff = [x - y for x, y in zip(rmse[a], rmse[b])]
        mean, lo, hi = t_interval(diff)
        p_t = stats.ttest_rel(rmse[a], rmse[b]).pvalue
        p_w = stats.wilcoxon(rmse[a], rmse[b]).pvalue
        wins = sum(d < 0 for d in diff)
        tests[f"{a} - {b}"] = {"mean": mean, "low": lo, "high": hi, "p_t": p_t, "p_wilcoxon": p_w, "wins": wins}
        print(f"| {a} - {b} | {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] | {p_t:.3f} | {p_w:.3f} | {wins}/{len(diff)} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rmse": rmse, "tests": tests}, handle, indent=2)


if __name__ == "__main__":
    main()
