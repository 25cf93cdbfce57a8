"""Co-Mixup's step time against ERM and CutMix on SmallCNN / MNIST5k, and its split (saliency pass, solver).

Run with one thread: ``OMP_NUM_THREADS=1 python benchmarks/bench_comixup.py --part steps --repeats 5``;
``--part gap`` measures the solver's objective against a brute-force search on tiny instances
(the brute force of ``tests/references/comixup_authors.py``).
Times are CPU seconds of this process (``time.process_time``), so other jobs on the machine do not
inflate them; contenders run interleaved round-robin. Results are written to
``docs/benchmarks/saliency_mixing.md`` by hand.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from lightning_mix.demos import SmallCNN
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import CutMix, dense_targets
from lightning_mix.mixing.comixup import CoMixer, comixup_objective, solve_comixup
from lightning_mix.mixing.input_saliency import input_gradient_saliency

from _harness import mnist5k_batch, time_interleaved


def part_gap() -> None:
    """Solver objective minus the brute-force one-hot optimum, over sum |cost|, on 2x2 grids."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "references"))
    from comixup_authors import brute_force_minimum

    g = torch.Generator().manual_seed(123)
    beta, gamma = 1.0, 0.5
    print("| inputs = outputs | instances | above the optimum | max excess / sum abs cost | mean | min |")
    print("|---|---|---|---|---|---|")
    for n_inputs, trials in ((2, 40), (3, 12)):
        excess = []
        for _ in range(trials):
            cost = torch.randn(n_inputs, 2, 2, generator=g) * 0.5
            eye = torch.eye(n_inputs)[None]
            masks = solve_comixup(cost[None], eye, beta, gamma, thres=0.0, generator=g)
            ours = comixup_objective(cost[None], masks, beta / 4, gamma / 4).item()
            best = brute_force_minimum(cost, beta / 4, gamma / 4, n_inputs)
            excess.append((ours - best) / cost.abs().sum().item())
        e = torch.tensor(excess)
        print(f"| {n_inputs} | {trials} | {int((e > 1e-6).sum())} | {e.max():.3f} | {e.mean():.4f} | {e.min():.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("steps", "gap"), default="steps")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.part == "gap":
        part_gap()
        return
    torch.manual_seed(0)
    x, y = mnist5k_batch()
    t = dense_targets(y, 10)
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
    results = time_interleaved(contenders, args.repeats, warmup=1, clock=time.process_time)
    erm, cut = results["ERM"][0], results["CutMix"][0]
    print(f"torch {torch.__version__}, {platform.machine()}, threads {torch.get_num_threads()}, batch {x.shape[0]}")
    print("| step | best CPU ms | median CPU ms | / ERM | / CutMix |")
    print("|---|---|---|---|---|")
    for name, (best, median) in results.items():
        print(f"| {name} | {1000 * best:.1f} | {1000 * median:.1f} | {best / erm:.2f} | {best / cut:.2f} |")


if __name__ == "__main__":
    main()
