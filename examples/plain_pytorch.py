"""lightning_mix's mixers in a plain PyTorch training loop (no Lightning), on the embedded MNIST5k.

    python examples/plain_pytorch.py                # "mixup or cutmix", about 10 s on 2 idle CPU cores
    python examples/plain_pytorch.py --mixer fmix   # or: mixup, cutmix, fmix, resizemix, none

The mixing layer is torch only: a mixer takes a batch of inputs and dense targets and returns a
``MixedBatch(inputs, targets, index, lam)``; train on it with ``soft_cross_entropy``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import lightning_mix
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import CutMix, FMix, Mixup, RandomChoice, ResizeMix, dense_targets

MIXERS = {
    "mixup-or-cutmix": lambda: RandomChoice([Mixup(alpha=0.8), CutMix(alpha=1.0)]),
    "mixup": lambda: Mixup(alpha=1.0, mode="elem"),
    "cutmix": lambda: CutMix(alpha=1.0, mode="elem"),
    "fmix": lambda: FMix(alpha=1.0, mode="elem"),
    "resizemix": lambda: ResizeMix(mode="elem"),
    "none": lambda: None,
}


def load_mnist5k(seed: int = 0):
    """The embedded 5,000 digits as float tensors: 3500 train / 500 val / 1000 test (val unused here)."""
    path = Path(lightning_mix.__file__).parent / "demos" / "data" / "mnist5k.npz"
    data = np.load(path)
    images = torch.from_numpy(data["images"]).float().div_(255).sub_(0.1307).div_(0.3081).unsqueeze(1)
    labels = torch.from_numpy(data["labels"]).long()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:3500], perm[4000:]
    return (images[train], labels[train]), (images[test], labels[test])


def small_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, num_classes),
    )  # fmt: skip


@torch.no_grad()
def evaluate(model, images, labels):
    model.eval()
    logits = torch.cat([model(x) for x in images.split(500)])
    nll = nn.functional.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc, nll


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixer", choices=sorted(MIXERS), default="mixup-or-cutmix")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    (train_x, train_y), (test_x, test_y) = load_mnist5k(args.seed)
    model = small_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    mixer = MIXERS[args.mixer]()
    # One generator for all mixing randomness: seed it and the run is reproducible; save its
    # get_state() with the checkpoint to resume the same lam sequence.
    generator = torch.Generator().manual_seed(args.seed)
    print(f"mixer: {mixer!r}")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed + epoch))
        total, steps = 0.0, 0
        for batch in order.split(args.batch_size):
            inputs, targets = train_x[batch], dense_targets(train_y[batch], 10)
            if mixer is not None:
                out = mixer(inputs, targets, generator=generator)
                inputs, targets = out.inputs, out.targets
            loss = soft_cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        acc, nll = evaluate(model, test_x, test_y)
        print(f"epoch {epoch}: train loss {total / steps:.3f}  test acc {acc:.3f}  test nll {nll:.3f}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
