"""RankMixup's BatchNorm statistics: test accuracy and NLL as trained, and after recomputing them on clean images.

RankMixupMixin (like the authors' code) runs the clean batch and then the mixed copies through the
network in training mode, so every BatchNorm layer's running statistics are updated by the mixed
batch last. This script trains ``RankMixupSmallCNN`` (and ERM's ``SmallCNN``) on MNIST5k, tests
it, then resets the BatchNorm statistics to those of the clean training images
(:func:`lightning_mix.averaging.recalibrate_batchnorm`, one pass) and tests again.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/rankmixup_batchnorm.py [--methods erm mrl mndcg]
[--seeds 0 1 2] [--epochs 10]``. Prints a Markdown table (one row per method and seed).
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl

from lightning_mix.averaging import recalibrate_batchnorm
from lightning_mix.demos import MNIST5kDataModule, RankMixupSmallCNN, SmallCNN


def _test(trainer: pl.Trainer, model: pl.LightningModule, data: MNIST5kDataModule) -> tuple[float, float]:
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    return metrics["test/acc"], metrics["test/nll"]


def run(method: str, seed: int, epochs: int) -> tuple[float, float, float, float]:
    """(accuracy, NLL) as trained, then after recomputing BatchNorm statistics on the clean training images."""
    pl.seed_everything(seed)
    model = SmallCNN() if method == "erm" else RankMixupSmallCNN(rank_loss=method, mix_seed=seed)
    data = MNIST5kDataModule(batch_size=128)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    as_trained = _test(trainer, model, data)
    recalibrate_batchnorm(model, data.train_dataloader())  # runs without autograd
    return (*as_trained, *_test(trainer, model, data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["erm", "mrl", "mndcg"], choices=["erm", "mrl", "mndcg"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print("| method | seed | accuracy as trained | accuracy, BN on clean | NLL as trained | NLL, BN on clean |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        for seed in args.seeds:
            acc, nll, acc_bn, nll_bn = run(method, seed, args.epochs)
            print(f"| {method} | {seed} | {acc:.4f} | {acc_bn:.4f} | {nll:.4f} | {nll_bn:.4f} |", flush=True)


if __name__ == "__main__":
    main()
