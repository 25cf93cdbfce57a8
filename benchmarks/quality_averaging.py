"""Quality of weight averaging on MNIST5k: last weights, EMA, SWA, uniform soup and greedy soup.

One fit per (label noise, seed) with the three callbacks attached together:
``EMA(decay=0.999, warmup=True, evaluate="raw")``, ``SWA(start_epoch=0.5)`` (epoch-end weights
of the second half, BatchNorm recomputed on the whole training split) and
``ModelSoup(start_epoch=2, bn_samples=1280)`` (epoch-end snapshots from epoch 2; uniform and greedy
soups judged on the 500 validation images by ``val/acc``, BatchNorm recomputed on 10 training
batches for every average). SmallCNN(width=16), AdamW with a cosine schedule, batch 128;
the data split is fixed (seed 0), the seed changes the initialisation and the batch order.

Each model is then scored on the 1000 test images (clean labels): accuracy, NLL and ECE (15
equal-width bins, top label). "last" is the trained weights after the last epoch, EMA is the
callback's average (BatchNorm statistics averaged with the rest), SWA is recalibrated here with
:func:`lightning_mix.averaging.recalibrate_batchnorm` on the training data.

Usage: ``python benchmarks/quality_averaging.py [--epochs 6] [--seeds 0 1 2] [--noise 0.0 0.3]``.
Prints a Markdown table of mean +- std over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lightning_mix.averaging import recalibrate_batchnorm
from lightning_mix.callbacks.ema import EMA
from lightning_mix.callbacks.model_soup import ModelSoup
from lightning_mix.callbacks.swa import SWA
from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.metrics import calibration_error

from _harness import quiet_trainer

METHODS = ("last", "EMA", "SWA", "uniform soup", "greedy soup")


@torch.no_grad()
def score(state_dict, loader, width: int) -> dict[str, float]:
    model = SmallCNN(width=width)
    model.load_state_dict(state_dict)
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x).float())
        labels.append(y)
    logits, labels = torch.cat(logits), torch.cat(labels)
    return {
        "acc": float((logits.argmax(-1) == labels).float().mean()),
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": float(calibration_error(logits, labels, n_bins=15)),
    }


def run(noise: float, seed: int, epochs: int, width: int, workdir: str) -> dict[str, dict[str, float]]:
    pl.seed_everything(seed, verbose=False)
    data = MNIST5kDataModule(batch_size=128, label_noise=noise, seed=0)
    model = SmallCNN(width=width)
    # all three are measured from their own averages: none of them puts its weights in the module
    ema = EMA(decay=0.999, warmup=True, evaluate="raw", owns_final_weights=False)
    swa = SWA(start_epoch=0.5, recalibrate_bn=False, owns_final_weights=False)  # recalibrated below, once
    soup = ModelSoup(
        start_epoch=2,
        storage="memory",
        dirpath=f"{workdir}/soups-{noise}-{seed}",
        keep="last",
        bn_samples=1280,
        owns_final_weights=False,  # the soups are read from their files; the module keeps the trained weights
    )
    trainer = quiet_trainer(
        max_epochs=epochs,
        devices=1,
        callbacks=[ema, swa, soup],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    test_loader = data.test_dataloader()
    states = {
        "last": soup.ingredient_state_dicts()[-1],
        "EMA": ema.averaged_state_dict(),
        "uniform soup": torch.load(soup.soup_paths["uniform"], weights_only=False)["state_dict"],
        "greedy soup": torch.load(soup.soup_paths["greedy"], weights_only=False)["state_dict"],
    }
    swa_model = SmallCNN(width=width)
    swa_model.load_state_dict(swa.averaged_state_dict())
    recalibrate_batchnorm(swa_model, data.train_dataloader())
    states["SWA"] = swa_model.state_dict()
    out = {name: score(states[name], test_loader, width) for name in METHODS}
    out["greedy soup"]["kept"] = len(soup.greedy_epochs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3])
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    results: dict[float, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="quality_averaging_") as workdir:
        for noise in args.noise:
            for seed in args.seeds:
                t0 = time.perf_counter()
                results.setdefault(noise, []).append(run(noise, seed, args.epochs, args.width, workdir))
                print(f"label_noise={noise} seed={seed}: {time.perf_counter() - t0:.0f}s", flush=True)
    print(
        f"\nMNIST5k test set (1000 images), SmallCNN(width={args.width}), {args.epochs} epochs, "
        f"seeds {args.seeds}, mean +- std; total {time.perf_counter() - start:.0f}s\n"
    )
    print("| label noise | weights | accuracy (%) | NLL | ECE (%) |")
    print("|---|---|---|---|---|")

    def fmt(values, scale, digits):
        mean = statistics.mean(values) * scale
        std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
        return f"{mean:.{digits}f} +- {std:.{digits}f}"

    for noise, runs in results.items():
        for name in METHODS:
            accs = [r[name]["acc"] for r in runs]
            nlls = [r[name]["nll"] for r in runs]
            eces = [r[name]["ece"] for r in runs]
            label = name
            if name == "greedy soup":
                label += f" (kept {', '.join(str(r[name]['kept']) for r in runs)} of {args.epochs - 2})"
            print(f"| {noise} | {label} | {fmt(accs, 100, 1)} | {fmt(nlls, 1, 3)} | {fmt(eces, 100, 1)} |")


if __name__ == "__main__":
    main()
