"""Whole-fit overhead of EMA and ModelSoup on the main job (SmallCNN on MNIST5k with Mixup-or-CutMix).

Runs the same fit without averaging, with EMA and with ModelSoup, interleaved over repeats so
machine noise hits all variants alike, and prints the median wall time and the ratio to the
plain fit. Target (issue 4): at most 1.10 for each.

Fit times on a shared machine vary by more than the overhead, so the script also times the
averaging callback's own hooks (everything it does: snapshots, EMA updates, the end-of-fit soup
evaluation) inside each fit, and prints that time over the same fit's time without it
("hook share", by wall and by process CPU time), a figure the noise barely touches.

    python benchmarks/bench_fit_overhead.py --epochs 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks import EMA, MixingCallback, ModelSoup
from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.mixing import CutMix, Mixup, RandomChoice

from _harness import quiet_trainer


def timed_hooks(callback: pl.Callback, spent: list[float]) -> pl.Callback:
    """Wrap the callback's hooks (instance attributes shadow the class's) to add their wall time to spent[0]
    and their process CPU time to spent[1]."""
    for name in dir(type(callback)):
        if not (name.startswith("on_") or name in ("setup", "teardown", "state_dict", "load_state_dict")):
            continue
        hook = getattr(callback, name)
        if not callable(hook):  # a property such as ModelSoup.on_disk
            continue

        def wrapper(*args, _hook=hook, **kwargs):
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                return _hook(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
                spent[1] += time.process_time() - start_cpu

        setattr(callback, name, wrapper)
    return callback


def fit_seconds(variant: str, epochs: int, workdir: str) -> tuple[float, float, float, float]:
    """Wall-clock and process CPU seconds of one fit (CPU time is steadier on a shared machine),
    and the wall and CPU time spent inside the averaging callback's hooks."""
    pl.seed_everything(0, verbose=False)
    callbacks = [MixingCallback(RandomChoice([Mixup(0.8), CutMix(1.0)]), seed=0)]
    spent = [0.0, 0.0]
    if variant == "ema":
        callbacks.append(timed_hooks(EMA(decay=0.99, warmup=True), spent))
    elif variant == "soup":
        callbacks.append(timed_hooks(ModelSoup(dirpath=tempfile.mkdtemp(dir=workdir)), spent))
    elif variant.startswith("soup-bn"):  # BatchNorm recalibrated on N training samples
        soup = ModelSoup(dirpath=tempfile.mkdtemp(dir=workdir), bn_samples=int(variant.removeprefix("soup-bn")))
        callbacks.append(timed_hooks(soup, spent))
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=callbacks,
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer.fit(SmallCNN(width=32, lr=0.003), datamodule=MNIST5kDataModule(batch_size=128))
    return time.perf_counter() - start, time.process_time() - start_cpu, spent[0], spent[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["plain", "ema", "soup"],
        help="plain, ema, soup, or soup-bnN (ModelSoup with bn_samples=N)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    variants = args.variants
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    share: dict[str, list[float]] = {v: [] for v in variants}
    cpu_share: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as workdir:
        fit_seconds("plain", 1, workdir)  # warm-up: imports, data loading, allocator
        for repeat in range(args.repeats):
            for variant in variants:
                wall, cpu_seconds, hooks, hooks_cpu = fit_seconds(variant, args.epochs, workdir)
                times[variant].append(wall)
                cpu[variant].append(cpu_seconds)
                share[variant].append(hooks / (wall - hooks))
                cpu_share[variant].append(hooks_cpu / (cpu_seconds - hooks_cpu))
                print(
                    f"repeat {repeat} {variant:8s} wall {wall:7.2f} s  cpu {cpu_seconds:7.2f} s  "
                    f"in hooks {hooks:6.2f} s (cpu {hooks_cpu:6.2f} s)",
                    flush=True,
                )
    plain, plain_cpu = statistics.median(times["plain"]), statistics.median(cpu["plain"])
    print(f"\nmain job, {args.epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'variant':10s} {'wall s':>8s} {'ratio':>7s} {'cpu s':>8s} {'ratio':>7s} {'hook share':>11s} {'(cpu)':>7s}")
    for variant in variants:
        wall, cpu_seconds = statistics.median(times[variant]), statistics.median(cpu[variant])
        hook_share, hook_cpu_share = statistics.median(share[variant]), statistics.median(cpu_share[variant])
        print(
            f"{variant:10s} {wall:8.2f} {wall / plain:7.3f} {cpu_seconds:8.2f} {cpu_seconds / plain_cpu:7.3f} "
            f"{1 + hook_share:11.3f} {1 + hook_cpu_share:7.3f}"
        )


if __name__ == "__main__":
    main()
