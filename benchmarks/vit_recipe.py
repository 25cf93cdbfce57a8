"""TinyViT recipe screens on MNIST5k with CutMix: test accuracy, NLL and wall time of one fit.

Fits ``TinyViT`` with the options given (the rest are TinyViT's defaults) on ``MNIST5kDataModule()``
(batch 128, random shifts of up to 2 pixels) with ``MixingCallback(CutMix(alpha=1.0, mode="batch"))``
(callbacks/cutmix.yaml; ``--mixing none`` for plain ERM), then tests the final weights on the
1,000 test images and prints one JSON line: the options, test accuracy and NLL, wall and CPU seconds
of the fit and the load average before and after (appended to ``--out`` too if given).
Run with ``OMP_NUM_THREADS=1``, one at a time (docs/benchmarks/vit_mixing.md, "Quality").

Usage: ``python benchmarks/vit_recipe.py --epochs 15 --patch-size 7 --dim 96 --depth 6 --stem conv --warmup-epochs 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks import MixingCallback
from lightning_mix.demos import MNIST5kDataModule, TinyViT
from lightning_mix.mixing import CutMix

from _harness import PrintValidation, quiet_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixing", choices=["cutmix", "none"], default="cutmix")
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--mlp-ratio", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-2)
    parser.add_argument("--stem", choices=["patch", "conv"], default="patch")
    parser.add_argument("--stem-channels", type=int, default=32)
    parser.add_argument("--warmup-epochs", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--print-every", type=int, default=5)
    parser.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    pl.seed_everything(args.seed, verbose=False)
    callbacks: list[pl.Callback] = [PrintValidation(args.print_every)]
    if args.mixing == "cutmix":
        callbacks.insert(0, MixingCallback(CutMix(alpha=1.0, mode="batch")))
    trainer = quiet_trainer(
        max_epochs=args.epochs,
        devices=1,
        callbacks=callbacks,
    )
    model = TinyViT(
        patch_size=args.patch_size,
        dim=args.dim,
        depth=args.depth,
        num_heads=args.num_heads,
        mlp_ratio=args.mlp_ratio,
        lr=args.lr,
        weight_decay=args.weight_decay,
        stem=args.stem,
        stem_channels=args.stem_channels,
        warmup_epochs=args.warmup_epochs,
    )
    data = MNIST5kDataModule(batch_size=args.batch_size)
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)
    fit_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    row = {
        **{k: v for k, v in vars(args).items() if k not in ("out", "print_every")},
        "test_acc": round(result["test/acc"], 4),
        "test_nll": round(result["test/nll"], 4),
        "fit_seconds": round(fit_seconds),
        "fit_cpu_seconds": round(cpu_seconds),
        "threads": torch.get_num_threads(),
        "load_before": round(load_before, 1),
        "load_after": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
