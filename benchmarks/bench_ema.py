"""EMA benchmarks: the per-step update on torchvision's resnet50 (CPU) and the whole-fit overhead.

Part 1 times one EMA update of all parameters and buffers of resnet50 (weights=None, float32,
25.6M parameters, 320 tensors) on the CPU:

- ours: what ``lightning_mix.callbacks.EMA`` runs after each optimizer step
  (``ema_update_(float32_average, live_tensors, decay)``), and ``ema_update_(list, module, decay)``
  which also collects the module's tensors on every call;
- Lightning's ``EMAWeightAveraging``: its ``AveragedModel(avg_fn=get_ema_avg_fn(decay))`` updated
  with ``update_parameters(pl_module)`` exactly as its ``on_train_batch_end`` does;
- ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (foreach, grouped);
- timm's ``ModelEmaV3`` (``update(model)``, foreach lerp).

Rounds are interleaved (each round times every method once) and the median per method is
reported with ratios against ours, so load from other jobs hits all methods alike.

Part 2 fits SmallCNN on MNIST5k for a few epochs with and without ``EMA`` (interleaved repeats)
and reports the overhead of the best times, and, since wall-clock differences on a shared machine
drown a small overhead, also the time spent inside the callback's hooks as a share of the fit.

Run: ``python benchmarks/bench_ema.py [--rounds 15] [--fit-epochs 2] [--fit-repeats 2] [--skip-fit]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def _time(fn, warmup: int = 2) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def bench_update(rounds: int, decay: float = 0.999) -> dict[str, float]:
    import lightning.pytorch as pl
    import torchvision
    from lightning.pytorch.callbacks import EMAWeightAveraging
    from timm.utils.model_ema import ModelEmaV3
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from lightning_mix.averaging import averaging_copy, averaging_tensors, ema_update_
    from lightning_mix.callbacks._weight_averaging import _AveragedWeights

    class Wrapped(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet50(weights=None)

    torch.manual_seed(0)
    module = Wrapped()
    live = averaging_tensors(module)
    print(
        f"resnet50: {sum(p.numel() for p in module.parameters()) / 1e6:.1f}M parameters, "
        f"{len(live)} tensors (parameters + buffers)"
    )

    callback_weights = _AveragedWeights()  # exactly what the EMA callback holds: live tensors + float32 average
    callback_weights.bind(module)
    callback_weights.start(None)
    ours_module_average = averaging_copy(module)
    lightning_cb = EMAWeightAveraging(decay=decay)
    lightning_cb.setup(trainer=None, pl_module=module, stage="fit")  # builds its AveragedModel
    swa_utils = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    timm_ema = ModelEmaV3(module, decay=decay)
    # AveragedModel copies on its first update; get both into the steady-state (EMA) path
    lightning_cb._average_model.update_parameters(module)
    swa_utils.update_parameters(module)

    methods = {
        "ours (callback path: cached tensor lists)": lambda: ema_update_(
            callback_weights.average, callback_weights.live, decay
        ),
        "ours (ema_update_ on the module)": lambda: ema_update_(ours_module_average, module, decay),
        "Lightning EMAWeightAveraging": lambda: lightning_cb._average_model.update_parameters(module),
        "AveragedModel + get_ema_multi_avg_fn": lambda: swa_utils.update_parameters(module),
        "timm ModelEmaV3": lambda: timm_ema.update(module),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            wall, cpu_s = _time(fn, warmup=1)
            times[name].append(wall)
            cpu[name].append(cpu_s)
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    minima = {name: min(values) * 1e3 for name, values in times.items()}
    cpu_med = {name: statistics.median(values) * 1e3 for name, values in cpu.items()}
    key = "ours (callback path: cached tensor lists)"
    print(f"\nEMA update per step over {rounds} interleaved rounds (ms); ratio = method / ours")
    print(
        "| method | wall median ms | ratio | wall min ms | ratio | CPU-time median ms | ratio |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    for name in medians:
        print(
            f"| {name} | {medians[name]:.2f} | {medians[name] / medians[key]:.2f}x "
            f"| {minima[name]:.2f} | {minima[name] / minima[key]:.2f}x "
            f"| {cpu_med[name]:.2f} | {cpu_med[name] / cpu_med[key]:.2f}x |"
        )
    return medians


def bench_fit(epochs: int, repeats: int) -> dict[str, float]:
    import lightning.pytorch as pl

    from lightning_mix.callbacks.ema import EMA
    from lightning_mix.demos import MNIST5kDataModule, SmallCNN

    from _harness import quiet_trainer

    hook_seconds: list[float] = []

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                hook_seconds[-1] += time.perf_counter() - start

        return wrapper

    def fit(with_ema: bool) -> float:
        pl.seed_everything(0, verbose=False)
        callbacks = []
        if with_ema:
            ema = EMA(decay=0.999)
            for hook in (
                "setup",
                "on_fit_start",
                "on_train_batch_end",
                "on_validation_epoch_start",
                "on_validation_epoch_end",
                "on_train_end",
            ):
                setattr(ema, hook, timed(getattr(ema, hook)))  # Lightning looks hooks up on the instance
            hook_seconds.append(0.0)
            callbacks = [ema]
        trainer = quiet_trainer(
            devices=1,
            max_epochs=epochs,
            num_sanity_val_steps=0,
            callbacks=callbacks,
        )
        model = SmallCNN(width=16)
        data = MNIST5kDataModule(batch_size=128)
        start = time.perf_counter()
        trainer.fit(model, data)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"without EMA": [], "with EMA": []}
    for _ in range(repeats):
        times["without EMA"].append(fit(False))
        times["with EMA"].append(fit(True))
    best = {name: min(values) for name, values in times.items()}
    overhead = best["with EMA"] / best["without EMA"] - 1
    inside = [h / t for h, t in zip(hook_seconds, times["with EMA"])]
    print(f"\nWhole fit, SmallCNN(width=16) on MNIST5k, {epochs} epochs, best of {repeats} interleaved repeats")
    print("| run | seconds (all repeats) | best |\n|---|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {best[name]:.1f} |")
    print(f"EMA overhead (best with / best without - 1): {overhead * 100:+.1f}%")
    print(
        "Time inside the EMA callback's hooks (updates, swaps, copies) as a share of each EMA fit: "
        + ", ".join(f"{100 * x:.2f}%" for x in inside)
    )
    best["overhead"] = overhead
    best["hook_share"] = max(inside)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--fit-epochs", type=int, default=2)
    parser.add_argument("--fit-repeats", type=int, default=3)
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")
    bench_update(args.rounds)
    if not args.skip_fit:
        bench_fit(args.fit_epochs, args.fit_repeats)


if __name__ == "__main__":
    main()
