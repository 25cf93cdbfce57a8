"""Step time and memory of AutoMix, SAMix and AdAutoMix against ERM and Mixup (SmallCNN on MNIST5k batches).

One training step = forward(s), backward and an AdamW step, the same loop for every method:

- ``erm``: cross-entropy on the clean batch;
- ``mixup``: the library's ``Mixup(alpha=1)`` on inputs and dense targets, cross-entropy on the mixed batch;
- ``automix``: ``AutoMixMixin`` (momentum update + ``automix_losses``: mixed, clean and momentum-copy
  forwards, the partial feature forward and the Mix Block);
- ``samix``: ``SAMixMixin``, the same step with SAMix's Mix Block and regularisers;
- ``adautomix``: ``AdAutoMixMixin`` (the demo ``AdAutoMixSmallCNN``: target-network update +
  ``adautomix_losses`` with N = 3 images, alternating adversarial and cooperative generator steps,
  one backward and an AdamW step for each of its two optimisers).

Methods are interleaved over rounds so machine noise hits them alike; the table gives the median
step time, its ratio to ERM and to Mixup, the bytes autograd saves for backward in one step (the
activation memory, counted once per storage through ``saved_tensors_hooks``), the extra persistent
state (Mix Block or generator, its AdamW moments, the momentum copy) and each method's peak RSS growth over the
first step. Run with one thread for a stable figure:

    OMP_NUM_THREADS=1 python benchmarks/bench_learned_mixing.py --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from lightning_mix.demos import AdAutoMixSmallCNN, MNIST5kDataModule, SmallCNN
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import Mixup, dense_targets
from lightning_mix.mixins import AutoMixMixin, SAMixMixin

from _harness import saved_tensor_bytes


class AutoMixCNN(AutoMixMixin, SmallCNN):
    def __init__(self, width: int = 32) -> None:
        super().__init__(width=width)
        self.configure_automix(feature_layer="block2", feature_channels=2 * width, seed=0)


class SAMixCNN(SAMixMixin, SmallCNN):
    def __init__(self, width: int = 32) -> None:
        super().__init__(width=width)
        self.configure_samix(feature_layer="block2", feature_channels=2 * width, seed=0)


def _adautomix_cnn(width: int) -> AdAutoMixSmallCNN:
    return AdAutoMixSmallCNN(width=width, mix_seed=0, cosine_schedule=False)


LEARNED = {"automix": AutoMixCNN, "samix": SAMixCNN, "adautomix": _adautomix_cnn}


def make_step(method: str, width: int):
    torch.manual_seed(0)
    model = LEARNED[method](width) if method in LEARNED else SmallCNN(width=width)
    model.train()
    if method == "adautomix":  # the demo's two optimisers (classifier, generator), same settings
        optimizers = model.configure_optimizers()
    else:
        optimizers = [torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)]
    mixup = Mixup(alpha=1.0)
    generator = torch.Generator().manual_seed(0)
    counter = [0]

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if method == "erm":
            return soft_cross_entropy(model(x), y)
        if method == "mixup":
            mixed = mixup(x, dense_targets(y, 10), generator)
            return soft_cross_entropy(model(mixed.inputs), mixed.targets)
        model.automix_sync_momentum(counter[0], 10_000)
        if method == "adautomix":
            return model.adautomix_losses(x, y, adversarial=counter[0] % 2 == 0)["loss"]
        return model.automix_losses(x, y)["loss"]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_of(x, y).backward()
        for optimizer in optimizers:
            optimizer.step()
        counter[0] += 1

    def saved_bytes(x: torch.Tensor, y: torch.Tensor) -> int:
        return saved_tensor_bytes(loss_of, x, y, optimizers=optimizers)

    def extra_state_bytes() -> int:
        if method not in LEARNED:
            return 0
        mixer = model.adautomix_generator if method == "adautomix" else model.automix_block
        block = sum(p.numel() * p.element_size() for p in mixer.parameters())
        momentum = sum(t.numel() * t.element_size() for t in model.automix_momentum_state().values())
        return 3 * block + momentum  # weights + two AdamW moments, and the momentum copy

    return step, saved_bytes, extra_state_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--methods", default="erm,mixup,automix,samix,adautomix", help="comma-separated; erm first")
    args = parser.parse_args()

    data = MNIST5kDataModule(batch_size=args.batch_size)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))[:2]
    methods = tuple(args.methods.split(","))
    steps, times, saved, extra, rss = {}, {m: [] for m in methods}, {}, {}, {}
    for m in methods:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        steps[m], saved_fn, extra_fn = make_step(m, args.width)
        saved[m] = saved_fn(x, y)
        steps[m](x, y)  # warm-up (and creates the momentum copy)
        extra[m] = extra_fn()
        rss[m] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    for _ in range(args.rounds):
        for m in methods:
            for _ in range(args.steps):
                start = time.perf_counter()
                steps[m](x, y)
                times[m].append(time.perf_counter() - start)
    median = {m: statistics.median(times[m]) for m in methods}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, width {args.width}")
    print("| method | step (ms) | vs ERM | vs Mixup | saved for backward (MiB) | vs ERM | extra state (KiB) |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        print(
            f"| {m} | {1e3 * median[m]:.1f} | {median[m] / median['erm']:.2f}x | {median[m] / median['mixup']:.2f}x "
            f"| {saved[m] / 2**20:.1f} | {saved[m] / saved['erm']:.2f}x | {extra[m] / 2**10:.0f} |"
        )
    print("peak RSS growth over the first steps (KiB, in run order):", rss)


if __name__ == "__main__":
    main()
