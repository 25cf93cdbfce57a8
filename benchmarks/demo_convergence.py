"""SmallCNN with its defaults, plain ERM, on MNIST5k: test accuracy and NLL after a full fit.

Trains ``SmallCNN()`` (defaults: width 32, 5 x 5 convolutions in the first two blocks, AdamW lr
3e-3, weight decay 5e-4, cosine schedule over ``max_epochs``) on ``MNIST5kDataModule()``
(defaults: batch 128, random shifts of up to 2 pixels) for ``--epochs`` epochs with seed
``--seed``, then tests the final weights on the 1,000 test images.

Usage: ``python benchmarks/demo_convergence.py [--epochs 30] [--seed 0] [--random-shift 2]``.
The recipe screen of docs/benchmarks/demos.md varies ``--width``, ``--lr``, ``--weight-decay``,
``--batch-size``, ``--kernel-size`` (of the first two blocks) and adds a random affine transform
of the training images (``--affine-degrees``, ``--affine-scale``: rotation up to that many
degrees, scale in [1 - s, 1 + s], before the shift).
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_mix.demos import MNIST5kDataModule, SmallCNN

from _harness import PrintValidation, quiet_trainer


class _AffineTrainSet(Dataset):
    """The training set with a random rotation and scale of each image before its own transform."""

    def __init__(self, base: Dataset, degrees: float, scale: float, fill: float) -> None:
        self.base = base
        self.affine = v2.RandomAffine(degrees=degrees, scale=(1 - scale, 1 + scale), fill=fill)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[index]
        return self.affine(image), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-shift", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--affine-degrees", type=float, default=0.0)
    parser.add_argument("--affine-scale", type=float, default=0.0)
    args = parser.parse_args()
    pl.seed_everything(args.seed)
    trainer = quiet_trainer(
        max_epochs=args.epochs,
        callbacks=[PrintValidation()],
    )
    data = MNIST5kDataModule(batch_size=args.batch_size, random_shift=args.random_shift)
    if args.affine_degrees or args.affine_scale:
        data.setup("fit")
        background = float(data.train_set[0][0].min())  # the normalised value of a black pixel
        data.train_set = _AffineTrainSet(data.train_set, args.affine_degrees, args.affine_scale, background)
    start = time.perf_counter()
    model = SmallCNN(width=args.width, lr=args.lr, weight_decay=args.weight_decay, kernel_size=args.kernel_size)
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    print(
        f"epochs={args.epochs} seed={args.seed} random_shift={args.random_shift} kernel_size={args.kernel_size} "
        f"test/acc={result['test/acc']:.4f} test/nll={result['test/nll']:.4f} fit_seconds={fit_seconds:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
