"""Co-Mixup's step time against ERM and CutMix on SmallCNN / MNIST5k, and its split (saliency pass, solver).

Run with one thread: ``OMP_NUM_THREADS=1 python benchmarks/bench_comixup.py --repeats 5``.
Times are CPU seconds of this process (``time.process_time``), so other jobs on the machine do not
inflate them; contenders run interleaved round-robin. Results are written to
``docs/benchmarks/saliency_mixing.md`` by hand.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import CutMix, dense_targets
from lightning_mix.mixing.comixup import CoMixer
from lightning_mix.mixing.input_saliency import input_gradient_saliency


def _batch(n: int = 128):
    dm = MNIST5kDataModule(batch_size=n)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    return x, dense_targets(y, 10)


def measure(contenders: dict, repeats: int, warmup: int = 1) -> dict:
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {name: (min(v), statistics.median(v)) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, t = _batch()
    model = SmallCNN(width=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(inputs, targets):
        opt.zero_grad(set_to_none=True)
        soft_cross_entropy(model(inputs), targets).backward()
        opt.step()

    cutmix, comix = CutMix(1.0), CoMixer()
    g = torch.Generator().manual_seed(0)
    saliency = input_gradient_saliency(model, x, t)

    def comixup_step():  # what the callback does: train-mode saliency pass, the mixer, then the step
        mixed = comix(x, t, input_gradient_saliency(model, x, t), g).mixed
        step(mixed.inputs, mixed.targets)

    contenders = {
        "ERM": lambda: step(x, t),
        "CutMix": lambda: step(*cutmix(x, t, generator=g)[:2]),
        "Co-Mixup": comixup_step,
        "Co-Mixup: saliency pass alone": lambda: input_gradient_saliency(model, x, t),
        "Co-Mixup: mixer alone (solver, composition)": lambda: comix(x, t, saliency, g),
    }
    results = measure(contenders, args.repeats)
    erm, cut = results["ERM"][0], results["CutMix"][0]
    print(f"torch {torch.__version__}, {platform.machine()}, threads {torch.get_num_threads()}, batch {x.shape[0]}")
    print("| step | best CPU ms | median CPU ms | / ERM | / CutMix |")
    print("|---|---|---|---|---|")
    for name, (best, median) in results.items():
        print(f"| {name} | {1000 * best:.1f} | {1000 * median:.1f} | {best / erm:.2f} | {best / cut:.2f} |")


if __name__ == "__main__":
    main()
