"""Step time of SUMix against an ERM step and a CutMix step (SmallCNN on MNIST5k).

SmallCNN (width 32) on MNIST5k training batches of 128 (1x28x28), one Adam step per call:

* ERM: forward, soft cross-entropy, backward, step;
* CutMix: ``CutMix(alpha=0.2, pairing="random")`` (SUMix's default mixer), then the ERM step;
* SUMix: ``SUMixSmallCNN.sumix_losses`` (clean forward with the uncertainty head, the same CutMix,
  mixed forward, ratio correction, regulariser), backward, step.

The SUMix step is also split: the two forwards and the backward against the correction and the
regulariser alone. Contenders run interleaved round-robin; best and median milliseconds are printed.

    OMP_NUM_THREADS=1 python benchmarks/bench_sumix.py --repeats 20
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from lightning_mix.demos import SUMixSmallCNN
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import CutMix, dense_targets
from lightning_mix.mixing.sumix import corrected_lam, semantic_distances, uncertainty_loss

from _harness import mnist5k_batch, time_interleaved


def main(repeats: int) -> None:
    torch.manual_seed(0)
    x, y = mnist5k_batch()
    t = dense_targets(y, 10)
    model = SUMixSmallCNN(width=32, mix_seed=0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cutmix = CutMix(alpha=0.2, pairing="random")
    g = torch.Generator().manual_seed(0)

    def step(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def erm() -> None:
        step(soft_cross_entropy(model(x), t))

    def cut() -> None:
        mixed = cutmix(x, t, generator=g)
        step(soft_cross_entropy(model(mixed.inputs), mixed.targets))

    def sumix() -> None:
        step(model.sumix_losses(x, y)["loss"])

    index = torch.randperm(128, generator=g)
    lam = torch.full((128,), 0.6)
    logits = [torch.randn(128, 10, generator=g) for _ in range(4)]

    def rule_only() -> None:
        own, partner = semantic_distances(logits[0], logits[1], y, index)
        corrected_lam(lam, own, partner, y, index)
        uncertainty_loss(own, partner, logits[2], logits[3], y, index, lam)

    results = time_interleaved(
        {"ERM": erm, "CutMix": cut, "SUMix": sumix, "SUMix rule only": rule_only}, repeats, warmup=3
    )
    erm_best, cut_best = results["ERM"][0], results["CutMix"][0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nStep times, SmallCNN(width=32), batch 128x1x28x28, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}, load average {load:.1f}; best of {repeats} (median)"
    )
    print("| step | best ms | median ms | / ERM | / CutMix |")
    print("|---|---|---|---|---|")
    for name, (best, median) in results.items():
        print(f"| {name} | {best * 1e3:.1f} | {median * 1e3:.1f} | {best / erm_best:.2f} | {best / cut_best:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    main(parser.parse_args().repeats)
