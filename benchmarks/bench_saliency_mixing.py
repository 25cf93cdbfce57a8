"""Step time of PuzzleMix against an ERM step and a CutMix step, and the graph-cut solvers' objective gap.

Part 1 (``--part steps``): SmallCNN (width 32) on MNIST5k training batches of 128, one Adam step
per call: ERM (forward, soft cross-entropy, backward, step), CutMix (CutMix(1.0) then the step),
PuzzleMix (the callback's work: the clean saliency pass in eval mode, the mask energy, the graph
cut, the transport and composition, then the step) for each grid size of the MNIST preset
({2, 4, 7, 14}) and each solver, and AlignMixup's feature branch (Sinkhorn alignment of block3's
128x7x7 maps inside the forward, with the authors' stopping threshold and with all 100 iterations;
its input branch is a Mixup step). The PuzzleMix work is also timed piece by piece (saliency pass /
energy + solver / transport + composition). Contenders run interleaved round-robin; best and
median seconds are printed.

Part 3 (``--part options``): the same PuzzleMix step (torch solver, each grid of the preset) with
the authors' optional extras: the adversarial step (``adv_p=1``: random start, FGSM noise from the
saliency pass's gradient, both sides perturbed, in pixel space with MNIST's mean and std), the clean
loss (``clean_lam=1``: the pass in train mode, its loss kept and added to the step's loss) and both,
against ERM and the plain PuzzleMix step.

Part 2 (``--part gap``): the torch solver's energy against gco's alpha-beta swap (the authors'
solver) on the PuzzleMix energies of real MNIST5k batches (saliency from a SmallCNN trained for
one epoch), and against brute force on random 3x3 instances with 3 labels.

    OMP_NUM_THREADS=1 python benchmarks/bench_saliency_mixing.py            # both parts, ~5 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_saliency_mixing.py --part gap
    OMP_NUM_THREADS=1 python benchmarks/bench_saliency_mixing.py --part options
"""

from __future__ import annotations

import argparse
import functools
import itertools
import platform
import statistics

import torch

from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import CutMix, dense_targets, mix_targets
from lightning_mix.mixing.alignment import align_and_mix
from lightning_mix.mixing.graphcut import (
    gco_available,
    grid_energy,
    solve_grid_gco,
    solve_grid_torch,
)
from lightning_mix.mixing.input_saliency import input_gradient, input_gradient_saliency, pool_saliency, reduce_channels
from lightning_mix.mixing.puzzle_adversarial import PixelScale, fgsm_perturbation, perturb, random_start
from lightning_mix.mixing.puzzlemix import PuzzleMixer, puzzle_energy
from lightning_mix.mixing.transport import permute_blocks, transport_sources

from _harness import mnist5k_batch, time_interleaved

BLOCK_NUMS = (2, 4, 7, 14)


def _batch(n: int = 128):
    x, y = mnist5k_batch(n)
    return x, dense_targets(y, 10)


def _saliency(model, x, t):
    model.eval()
    try:
        return input_gradient_saliency(model, x, t)
    finally:
        model.train()


def part_steps(repeats: int) -> None:
    torch.manual_seed(0)
    x, t = _batch()
    model = SmallCNN(width=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(inputs, targets):
        opt.zero_grad(set_to_none=True)
        soft_cross_entropy(model(inputs), targets).backward()
        opt.step()

    cutmix = CutMix(1.0)
    solvers = ["torch"] + (["gco"] if gco_available() else [])
    mixers = {s: PuzzleMixer(solver=s) for s in solvers}
    g = torch.Generator().manual_seed(0)
    contenders = {"ERM": lambda: step(x, t), "CutMix": lambda: step(*cutmix(x, t, generator=g)[:2])}
    for s in solvers:
        for n in BLOCK_NUMS:

            def puzzle(n=n, s=s):
                mixed = mixers[s](x, t, _saliency(model, x, t), n, g)
                step(mixed.inputs, mixed.targets)

            contenders[f"PuzzleMix {s} n={n}"] = puzzle
    index_a = torch.randperm(128, generator=g)
    lam_a = torch.full((128,), 0.6)
    for threshold in (0.1, None):

        def aligned(threshold=threshold):
            hook = model.block3.register_forward_hook(
                lambda m, a, out: align_and_mix(out, index_a, lam_a, 0, threshold=threshold)
            )
            try:
                step(x, mix_targets(t, index_a, lam_a))
            finally:
                hook.remove()

        contenders[f"AlignMixup features, threshold={threshold}"] = aligned
    results = time_interleaved(contenders, repeats)
    erm, cut = results["ERM"][0], results["CutMix"][0]
    print(
        f"\nStep times, SmallCNN(width=32), batch 128x1x28x28, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}; best of {repeats} (median)"
    )
    print("| step | best ms | median ms | / ERM | / CutMix |\n|---|---|---|---|---|")
    for name, (best, med) in results.items():
        print(f"| {name} | {best * 1e3:.1f} | {med * 1e3:.1f} | {best / erm:.2f} | {best / cut:.2f} |")
    for s in solvers:
        avg = statistics.mean(results[f"PuzzleMix {s} n={n}"][0] for n in BLOCK_NUMS)
        print(f"| PuzzleMix {s}, mean over the grid draw | {avg * 1e3:.1f} | | {avg / erm:.2f} | {avg / cut:.2f} |")

    # the split of the PuzzleMix work
    sal = _saliency(model, x, t)
    index = torch.randperm(128, generator=g)
    lam = torch.full((128,), 0.5)
    parts = {"saliency pass": lambda: _saliency(model, x, t)}
    for n in BLOCK_NUMS:
        sal_own = pool_saliency(sal, (n, n))
        energy = functools.partial(puzzle_energy, sal_own, sal_own[index], x, x[index], lam)
        parts[f"energy n={n}"] = energy
        u, wv, wh = energy()
        for s in solvers:
            solve = solve_grid_torch if s == "torch" else solve_grid_gco
            parts[f"solver {s} n={n}"] = lambda u=u, wv=wv, wh=wh, solve=solve: solve(u, wv, wh)
        mask = 1.0 - solve_grid_torch(u, wv, wh).float() / 2

        def transport(n=n, so=sal_own, mask=mask):
            own = permute_blocks(x, transport_sources(mask > 0, so, 0.8), n)
            partner = permute_blocks(x[index], transport_sources(mask < 1, so[index], 0.8), n)
            full = mask.repeat_interleave(28 // n, 1).repeat_interleave(28 // n, 2).unsqueeze(1)
            return torch.lerp(partner, own, full)

        parts[f"transport+compose n={n}"] = transport
    split = time_interleaved(parts, repeats)
    print("\n| PuzzleMix part | best ms | median ms |\n|---|---|---|")
    for name, (best, med) in split.items():
        print(f"| {name} | {best * 1e3:.2f} | {med * 1e3:.2f} |")


def _brute(unary, w_v, w_h):
    n, m, labels = unary.shape
    cands = torch.tensor(list(itertools.product(range(labels), repeat=n * m))).view(-1, n, m)
    k = cands.shape[0]
    e = grid_energy(cands, unary.expand(k, -1, -1, -1), w_v.expand(k, -1, -1), w_h.expand(k, -1, -1))
    return float(e.min())


def part_gap() -> None:
    torch.manual_seed(0)
    dm = MNIST5kDataModule(batch_size=128)
    dm.setup("fit")
    model = SmallCNN(width=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = dm.train_dataloader()
    for x, y in loader:  # one epoch so the saliency is not that of a random network
        opt.zero_grad()
        soft_cross_entropy(model(x), y).backward()
        opt.step()
    batches = [next(iter(loader)) for _ in range(2)]
    print(
        "\nTorch solver vs gco (alpha-beta swap), PuzzleMix energies of MNIST5k batches, authors' defaults, "
        "lam ~ U(0, 1); relative gap = (E_torch - E_gco) / |E_gco|"
    )
    print("| grid | sweeps | instances | mean gap % | max gap % | torch better | equal | gco better |")
    print("|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(1)
    for n in BLOCK_NUMS:
        unaries = []
        for x, y in batches:
            t = dense_targets(y, 10)
            sal = _saliency(model, x, t)
            index = torch.randperm(x.shape[0], generator=g)
            lam = torch.rand(x.shape[0], generator=g)
            so = pool_saliency(sal, (n, n))
            unaries.append(puzzle_energy(so, so[index], x, x[index], lam))
        u, wv, wh = (torch.cat(parts) for parts in zip(*unaries))
        e_gco = grid_energy(solve_grid_gco(u, wv, wh), u, wv, wh)
        for sweeps in (2, 8, 32):
            e_torch = grid_energy(solve_grid_torch(u, wv, wh, sweeps=sweeps), u, wv, wh)
            gap = (e_torch - e_gco) / e_gco.abs()
            tol = 1e-6
            print(
                f"| {n}x{n} | {sweeps} | {u.shape[0]} | {100 * float(gap.mean()):.3f} | {100 * float(gap.max()):.3f} | "
                f"{int((gap < -tol).sum())} | {int((gap.abs() <= tol).sum())} | {int((gap > tol).sum())} |"
            )
    print("\nAgainst brute force, random 3x3 grids, 3 labels, unary ~ U(0,1), weights ~ U(0, 0.6)")
    print("| solver | instances | mean gap % | max gap % | optimal |\n|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(2)
    b = 100
    u = torch.rand(b, 3, 3, 3, generator=gen, dtype=torch.float64)
    wv = torch.rand(b, 2, 3, generator=gen, dtype=torch.float64) * 0.6
    wh = torch.rand(b, 3, 2, generator=gen, dtype=torch.float64) * 0.6
    best = torch.tensor([_brute(u[i], wv[i], wh[i]) for i in range(b)], dtype=torch.float64)
    solvers = {"torch (local search, 8 sweeps)": lambda: solve_grid_torch(u, wv, wh, exhaustive_limit=0)}
    if gco_available():
        solvers["gco swap"] = lambda: solve_grid_gco(u, wv, wh)
    for name, fn in solvers.items():
        gap = (grid_energy(fn(), u, wv, wh) - best) / best.abs()
        print(
            f"| {name} | {b} | {100 * float(gap.mean()):.3f} | {100 * float(gap.max()):.3f} | "
            f"{int((gap <= 1e-6).sum())} |"
        )


def part_options(repeats: int) -> None:
    """PuzzleMix steps with the adversarial step and/or the clean loss, as the callback runs them."""
    torch.manual_seed(0)
    x, t = _batch()
    model = SmallCNN(width=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    mixer = PuzzleMixer(solver="torch")
    scale = PixelScale([0.1307], [0.3081])
    eps = 10.0 / 255
    g = torch.Generator().manual_seed(0)

    def erm():
        opt.zero_grad(set_to_none=True)
        soft_cross_entropy(model(x), t).backward()
        opt.step()

    def puzzle(n, adversarial, clean_lam):
        pixels = scale.to_pixels(x)
        probe, start = x, None
        if adversarial:
            start = random_start(pixels, eps, g)
            probe = scale.from_pixels(pixels + start)
        if clean_lam == 0:
            model.eval()
        try:
            gradient, loss = input_gradient(model, probe, t, keep_graph=clean_lam > 0)
        finally:
            model.train()
        sources = x
        if adversarial:
            sources = scale.from_pixels(perturb(pixels, fgsm_perturbation(start, gradient, eps, 0.5)))
        mixed = mixer(pixels, t, reduce_channels(gradient), n, g, sources, sources)
        opt.zero_grad(set_to_none=True)
        total = soft_cross_entropy(model(mixed.inputs), mixed.targets)
        if clean_lam > 0:
            total = total + clean_lam * loss
        total.backward()
        opt.step()

    variants = {"plain": (False, 0.0), "adv_p=1": (True, 0.0), "clean_lam=1": (False, 1.0), "both": (True, 1.0)}
    contenders = {"ERM": erm}
    for name, (adversarial, clean_lam) in variants.items():
        for n in BLOCK_NUMS:
            contenders[f"PuzzleMix {name} n={n}"] = functools.partial(puzzle, n, adversarial, clean_lam)
    results = time_interleaved(contenders, repeats)
    erm_best = results["ERM"][0]
    print(
        f"\nPuzzleMix options, SmallCNN(width=32), batch 128x1x28x28, torch solver, {torch.get_num_threads()} "
        f"thread(s), {platform.processor() or platform.machine()}; best of {repeats} (median)"
    )
    print("| step | best ms | median ms | / ERM | / plain PuzzleMix, same grid |\n|---|---|---|---|---|")
    for name in ["ERM", *(f"PuzzleMix {v} n={n}" for v in variants for n in BLOCK_NUMS)]:
        best, med = results[name]
        plain = results[name.replace(name.split()[1], "plain", 1)][0] if name != "ERM" else best
        print(f"| {name} | {best * 1e3:.1f} | {med * 1e3:.1f} | {best / erm_best:.2f} | {best / plain:.2f} |")
    for v in variants:
        avg = statistics.mean(results[f"PuzzleMix {v} n={n}"][0] for n in BLOCK_NUMS)
        plain = statistics.mean(results[f"PuzzleMix plain n={n}"][0] for n in BLOCK_NUMS)
        print(
            f"| PuzzleMix {v}, mean over the grid draw | {avg * 1e3:.1f} | | {avg / erm_best:.2f} | {avg / plain:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["steps", "gap", "options", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.part in ("steps", "all"):
        part_steps(args.repeats)
    if args.part in ("gap", "all"):
        if not gco_available():
            print("gco-wrapper is not installed: the gap part needs it (pip install gco-wrapper)")
        else:
            part_gap()
    if args.part in ("options", "all"):
        part_options(args.repeats)


if __name__ == "__main__":
    main()
