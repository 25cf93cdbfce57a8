"""CPU time of one TinyViT training step (forward, backward, AdamW) for the stems and sizes of the recipe screens.

Random inputs (B, 1, 28, 28) and labels; for each configuration, 2 warm-up steps, then the mean
process CPU time of ``--steps`` steps, and that times 28 (the steps of one MNIST5k epoch at batch 128).
Run with ``OMP_NUM_THREADS=1`` (docs/benchmarks/vit_mixing.md, "Quality").

Usage: ``python benchmarks/vit_stem_cost.py [--batch-size 128] [--steps 5]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_mix.demos import TinyViT
from lightning_mix.losses import soft_cross_entropy

CONFIGS = [
    {"stem": "patch"},
    {"stem": "conv", "stem_channels": 32},
    {"stem": "conv", "stem_channels": 16},
    {"stem": "conv", "stem_channels": 16, "dim": 64},
    {"stem": "conv", "stem_channels": 32, "patch_size": 4, "dim": 64, "depth": 4},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    steps_per_epoch = -(-3500 // args.batch_size)
    for options in CONFIGS:
        config = {"patch_size": 7, "dim": 96, "depth": 6, "num_heads": 4, **options}
        model = TinyViT(**config)
        optimizer = torch.optim.AdamW(model.parameters())
        for step in range(2 + args.steps):
            if step == 2:
                start = time.process_time()
            soft_cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        per_step = (time.process_time() - start) / args.steps
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{config}: {per_step * 1000:.0f} ms/step CPU, {per_step * steps_per_epoch:.1f} s/epoch "
            f"({steps_per_epoch} steps), {params} parameters",
            flush=True,
        )


if __name__ == "__main__":
    main()
