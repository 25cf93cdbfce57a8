"""Step time and memory of AdaMixUp against ERM and Mixup (SmallCNN on MNIST5k batches).

One training step = forward(s), backward and an AdamW step, the same loop for every method:

- ``erm``: cross-entropy on the clean batch;
- ``mixup``: the library's ``Mixup(alpha=1)`` on inputs and dense targets, cross-entropy on the mixed batch;
- ``adamixup``: ``AdaMixUpSmallCNN.adamixup_losses`` (the generator's own trunk on B/2 gate images, the
  classifier on the B mixed and original samples, the classifier's trunk and the discriminator head on
  3B/2 samples), as the authors;
- ``adamixup_shared``: the same with ``policy_trunk=None`` (the generator reads the classifier's trunk).

Methods are interleaved over rounds so machine noise hits them alike; the table gives the median step
time, its ratio to ERM and to Mixup, the bytes autograd saves for backward in one step (the activation
memory, counted once per storage through ``saved_tensors_hooks``) and the extra persistent state (the
generator and discriminator with their two AdamW moments). Run with one thread for a stable figure:

    OMP_NUM_THREADS=1 python benchmarks/bench_adamixup.py --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_mix.demos import AdaMixUpSmallCNN, MNIST5kDataModule, SmallCNN
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import Mixup, dense_targets

from _harness import saved_tensor_bytes

__all__ = ["main"]


class _SharedTrunkAdaMixUp(AdaMixUpSmallCNN):
    def __init__(self, width: int = 32) -> None:
        super().__init__(width=width, mix_seed=0)
        self.configure_adamixup(feature_dim=4 * width, policy_trunk=None, seed=0)


def make_step(method: str, width: int):
    torch.manual_seed(0)
    if method == "adamixup":
        model = AdaMixUpSmallCNN(width=width, mix_seed=0)
    elif method == "adamixup_shared":
        model = _SharedTrunkAdaMixUp(width)
    else:
        model = SmallCNN(width=width)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    mixup = Mixup(alpha=1.0)
    generator = torch.Generator().manual_seed(0)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if method == "erm":
            return soft_cross_entropy(model(x), y)
        if method == "mixup":
            mixed = mixup(x, dense_targets(y, 10), generator)
            return soft_cross_entropy(model(mixed.inputs), mixed.targets)
        return model.adamixup_losses(x, y)["loss"]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(x, y).backward()
        optimizer.step()

    def saved_bytes(x: torch.Tensor, y: torch.Tensor) -> int:
        return saved_tensor_bytes(loss_of, x, y, optimizers=[optimizer])

    def extra_state_bytes() -> int:
        if not method.startswith("adamixup"):
            return 0
        names = ("adamixup_policy_trunk.", "adamixup_policy_head.", "adamixup_discriminator.")
        params = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith(names))
        buffers = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.startswith(names))
        return 3 * params + buffers  # weights + two AdamW moments, and the generator's BatchNorm buffers

    return step, saved_bytes, extra_state_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()

    data = MNIST5kDataModule(batch_size=args.batch_size)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))[:2]
    methods = ("erm", "mixup", "adamixup", "adamixup_shared")
    steps, times, saved, extra = {}, {m: [] for m in methods}, {}, {}
    for m in methods:
        steps[m], saved_fn, extra_fn = make_step(m, args.width)
        saved[m] = saved_fn(x, y)
        steps[m](x, y)  # warm-up
        extra[m] = extra_fn()
    for _ in range(args.rounds):
        for m in methods:
            for _ in range(args.steps):
                start = time.perf_counter()
                steps[m](x, y)
                times[m].append(time.perf_counter() - start)
    median = {m: statistics.median(times[m]) for m in methods}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, width {args.width}")
    print(
        "| method | step (ms) | vs ERM | vs Mixup | saved for backward (MiB) | vs ERM | vs Mixup | extra state (KiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        print(
            f"| {m} | {1e3 * median[m]:.1f} | {median[m] / median['erm']:.2f}x | {median[m] / median['mixup']:.2f}x "
            f"| {saved[m] / 2**20:.1f} | {saved[m] / saved['erm']:.2f}x | {saved[m] / saved['mixup']:.2f}x "
            f"| {extra[m] / 2**10:.0f} |"
        )


if __name__ == "__main__":
    main()
