"""SmallCNN with its defaults, plain ERM, on MNIST5k: test accuracy and NLL after a full fit.

Trains ``SmallCNN()`` (defaults: width 32, AdamW lr 2e-3, weight decay 5e-4, cosine schedule over
``max_epochs``) on ``MNIST5kDataModule()`` (defaults: batch 128, random shifts of up to 2 pixels)
for ``--epochs`` epochs with seed ``--seed``, then tests the final weights on the 1,000 test images.

Usage: ``python benchmarks/demo_convergence.py [--epochs 30] [--seed 0] [--random-shift 2]``.
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl

from lightning_mix.demos import MNIST5kDataModule, SmallCNN


class _PrintValidation(pl.Callback):
    """Prints val/acc and val/nll after every epoch (the convergence curve)."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            print(
                f"epoch {trainer.current_epoch + 1}: val/acc={float(metrics['val/acc']):.4f} "
                f"val/nll={float(metrics['val/nll']):.4f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-shift", type=int, default=2)
    args = parser.parse_args()
    pl.seed_everything(args.seed)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_PrintValidation()],
    )
    data = MNIST5kDataModule(random_shift=args.random_shift)
    start = time.perf_counter()
    model = SmallCNN()
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    print(
        f"epochs={args.epochs} seed={args.seed} random_shift={args.random_shift} "
        f"test/acc={result['test/acc']:.4f} test/nll={result['test/nll']:.4f} fit_seconds={fit_seconds:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
