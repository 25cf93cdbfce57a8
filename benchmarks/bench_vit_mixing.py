"""Step time of the ViT mixing callbacks relative to CutMix alone, on TinyViT.

Each method trains TinyViT in a Trainer on random 28x28 images; a timing callback placed first in
the callbacks list records the wall time from ``on_train_batch_start`` to ``on_train_batch_end``
of every step (mixing, the probe, the hooks, forward, backward, optimiser step). Methods run in
interleaved rounds so that drift in machine load hits them alike; the figure is the median step
time over all rounds, and its ratio to CutMix's.

    OMP_NUM_THREADS=1 python benchmarks/bench_vit_mixing.py --batch-size 32 --steps 20 --rounds 5

SMMix is a module mixin, not a callback: its rows train :class:`~lightning_mix.demos.SMMixTinyViT`
(same network plus a token head) with no callback. ``--methods`` picks rows by name prefix.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import MixingCallback, TLAlign, TokenShuffle, TransMix
from lightning_mix.demos import SMMixTinyViT, TinyViT
from lightning_mix.mixing import CutMix
from lightning_mix.mixing.patch_grid import PatchCutMix

from _harness import quiet_trainer


class StepTimer(Callback):
    """Wall time and this process's CPU time of each step (CPU time is what other jobs on a loaded
    machine disturb least: with one intra-op thread it counts only this step's own work)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.times, self.cpu_times = skip, [], []
        self._start = self._cpu_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.skip:
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.process_time() - self._cpu_start)


def methods() -> dict:
    return {
        "CutMix (MixingCallback)": lambda: MixingCallback(CutMix(1.0), label_smoothing=0.1, seed=0),
        "PatchCutMix (MixingCallback)": lambda: MixingCallback(PatchCutMix(1.0, patch_size=4), seed=0),
        "TransMix (CutMix)": lambda: TransMix(CutMix(1.0), label_smoothing=0.1, seed=0),
        "TLAlign (PatchCutMix)": lambda: TLAlign(PatchCutMix(1.0, patch_size=4), label_smoothing=0.1, seed=0),
        "CutMix + TokenShuffle(1.0)": lambda: [
            MixingCallback(CutMix(1.0), label_smoothing=0.1, seed=0),
            TokenShuffle(shuffle_rate=1.0, seed=0),
        ],
        "SMMix (SMMixTinyViT, switch_prob 0.5)": lambda: [],
        "SMMix (SMMixTinyViT, switch_prob 1.0)": lambda: [],
    }


# rows that train a module with its own mixing step instead of TinyViT plus a callback
MODELS = {
    "SMMix (SMMixTinyViT, switch_prob 0.5)": lambda args: SMMixTinyViT(**args, mix_seed=0),
    "SMMix (SMMixTinyViT, switch_prob 1.0)": lambda args: SMMixTinyViT(**args, switch_prob=1.0, mix_seed=0),
}


def run(name: str, make_callback, data, batch_size: int, steps: int, skip: int, model_args: dict) -> StepTimer:
    torch.manual_seed(0)
    timer = StepTimer(skip)
    trainer = quiet_trainer(
        max_steps=steps + skip,
        callbacks=[timer, *(made if isinstance(made := make_callback(), list) else [made])],
    )
    model = MODELS[name](model_args) if name in MODELS else TinyViT(**model_args)
    trainer.fit(model, DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True))
    return timer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--methods", nargs="*", default=None, help="row name prefixes (CutMix always runs)")
    args = parser.parse_args()
    chosen = {
        name: make
        for name, make in methods().items()
        if args.methods is None or name.startswith("CutMix (") or any(name.startswith(m) for m in args.methods)
    }
    model_args = {"dim": args.dim, "depth": args.depth, "num_heads": 4, "patch_size": 4}
    n = args.batch_size * (args.steps + args.skip)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    times: dict[str, list[float]] = {name: [] for name in chosen}
    cpu_times: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(args.rounds):
        for name, make in chosen.items():
            timer = run(name, make, data, args.batch_size, args.steps, args.skip, model_args)
            times[name] += timer.times
            cpu_times[name] += timer.cpu_times
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"load {os.getloadavg()[0]:.1f}, TinyViT {model_args}, batch {args.batch_size}"
    )
    base = statistics.median(times["CutMix (MixingCallback)"])
    cpu_base = statistics.median(cpu_times["CutMix (MixingCallback)"])
    cpu_mean_base = statistics.mean(cpu_times["CutMix (MixingCallback)"])
    print(
        "| method | CPU ms / step | vs CutMix (CPU) | wall ms / step | vs CutMix (wall) | steps "
        "| mean CPU ms / step | vs CutMix (mean CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in times:
        wall, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
        cpu_mean = statistics.mean(cpu_times[name])
        print(
            f"| {name} | {1000 * cpu:.1f} | {cpu / cpu_base:.2f}x | {1000 * wall:.1f} | {wall / base:.2f}x "
            f"| {len(times[name])} | {1000 * cpu_mean:.1f} | {cpu_mean / cpu_mean_base:.2f}x |"
        )


if __name__ == "__main__":
    main()
