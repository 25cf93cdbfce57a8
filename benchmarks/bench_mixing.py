"""Time per batch of lightning_mix's mixers against timm's Mixup and torchvision's v2 MixUp/CutMix.

Every figure is measured in the same run and printed as a ratio to its anchor (timm, same mode)
so machines can be compared. Our time includes turning class indices into dense targets, as the
anchors do inside their call. timm mixes in place, so it is given the same tensor every time
(the values stay bounded); ours and torchvision's return new tensors.

    python benchmarks/bench_mixing.py                 # CPU, about 2-3 minutes on 2 cores
    python benchmarks/bench_mixing.py --device cuda   # the same on a GPU
    python benchmarks/bench_mixing.py --repeats 5     # quicker, noisier
    OMP_NUM_THREADS=1 python benchmarks/bench_mixing.py --threads 1   # one thread (a shared machine)

Each contender is called ``--repeats`` times after warm-up, interleaved round-robin so a
background load hits every contender alike. Median and best (minimum) times are printed; the
ratios use the best times, the least disturbed by other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import CutMix, FMix, Mixup, ResizeMix, SaliencyMix, box_corners, dense_targets, paste_boxes
from lightning_mix.mixing.mixers import resize_paste

from _harness import time_interleaved


def bench_mixers(batch, size, num_classes, repeats, device):
    from timm.data import Mixup as TimmMixup
    from torchvision.transforms import v2

    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for kind in ("mixup", "cutmix"):
        contenders = {}
        for mode in ("batch", "pair", "elem"):
            timm = TimmMixup(
                mixup_alpha=1.0 if kind == "mixup" else 0.0,
                cutmix_alpha=1.0 if kind == "cutmix" else 0.0,
                mode=mode,
                num_classes=num_classes,
            )
            ours = Mixup(alpha=1.0, mode=mode) if kind == "mixup" else CutMix(alpha=1.0, mode=mode)
            contenders[f"timm {mode}"] = lambda timm=timm: timm(x, y)
            contenders[f"ours {mode}"] = lambda ours=ours: ours(x, dense_targets(y, num_classes), g)
        tv = (
            v2.MixUp(alpha=1.0, num_classes=num_classes)
            if kind == "mixup"
            else v2.CutMix(alpha=1.0, num_classes=num_classes)
        )
        contenders["torchvision batch"] = lambda tv=tv: tv(x, y)
        res = time_interleaved(contenders, repeats, device=device)
        for mode in ("batch", "pair", "elem"):
            ours_t, timm_t = res[f"ours {mode}"], res[f"timm {mode}"]
            rows.append(
                (kind, mode, ours_t, timm_t, timm_t.best / ours_t.best, res["timm elem"].best / ours_t.best, "timm")
            )
        tv_t = res["torchvision batch"]
        rows.append(
            (kind, "batch", res["ours batch"], tv_t, tv_t.best / res["ours batch"].best, float("nan"), "torchvision v2")
        )
    others = {
        f"{name} {mode}": (lambda m=m: m(x, dense_targets(y, num_classes), g))
        for name, cls in (("FMix", FMix), ("ResizeMix", ResizeMix), ("SaliencyMix", SaliencyMix))
        for mode in ("batch", "elem")
        for m in [cls(mode=mode)]
    }
    other_res = time_interleaved(others, max(3, repeats // 3), warmup=1, device=device)
    return rows, other_res


def bench_fast_paths(batch, size, repeats):
    """CPU only: CutMix's and ResizeMix's batch-mode box copy against their general (device) path
    run on the same CPU tensors, both from the same draws. A fast path is kept only at >= 1.3x."""
    x = torch.randn(batch, 3, size, size)
    t = dense_targets(torch.randint(0, 10, (batch,)), 10)
    cutmix, resizemix = CutMix(alpha=1.0), ResizeMix()

    def cutmix_general():
        g = torch.Generator().manual_seed(0)
        index, lam = cutmix.draw(batch, g, "cpu", t)
        sizes = torch.tensor([size, size], dtype=torch.float64)
        centres = torch.floor(torch.rand((1, 2), generator=g, dtype=torch.float64) * sizes).long()
        lo, hi = box_corners(lam[:1], centres, (size, size))
        return paste_boxes(x, index, lo, hi)

    def resizemix_general():
        g = torch.Generator().manual_seed(0)
        index, lam = resizemix.draw(batch, g, "cpu", t)
        return resize_paste(x, index, (1.0 - lam).clamp_min(0).sqrt(), g, "batch")

    contenders = {
        "CutMix fast": lambda: cutmix(x, t, torch.Generator().manual_seed(0)),
        "CutMix general": cutmix_general,
        "ResizeMix fast": lambda: resizemix(x, t, torch.Generator().manual_seed(0)),
        "ResizeMix general": resizemix_general,
    }
    return time_interleaved(contenders, repeats)


def bench_loss(batch, classes, repeats, device):
    z = torch.randn(batch, classes, device=device, requires_grad=True)
    t = torch.softmax(torch.randn(batch, classes, device=device), dim=-1)

    def step(fn):
        def run():
            z.grad = None
            fn(z, t).backward()

        return run

    return time_interleaved(
        {"F.cross_entropy": step(F.cross_entropy), "soft_cross_entropy": step(soft_cross_entropy)},
        repeats,
        device=device,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    import os

    allocator = {k: os.environ[k] for k in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_") if k in os.environ}
    print(
        f"# bench_mixing on {name}, torch {torch.__version__}, {args.repeats} repeats, "
        f"allocator env {allocator or 'default'}"
    )
    start = time.perf_counter()
    for batch, size in ((256, 32), (128, 224)):
        rows, others = bench_mixers(batch, size, 1000, args.repeats, device)
        print(f"\n## B={batch} x 3x{size}x{size} float32, 1000 classes (ms per batch: median / best; ratios of best)")
        print(
            f"{'method':8s} {'mode':6s} {'ours':>17s} {'anchor':>17s} {'anchor/ours':>11s} {'timm elem/ours':>14s}  anchor"
        )
        for kind, mode, ours_t, anchor_t, ratio, vs_elem, anchor in rows:
            print(
                f"{kind:8s} {mode:6s} {ours_t.median * 1e3:8.2f} /{ours_t.best * 1e3:7.2f} {anchor_t.median * 1e3:8.2f} /{anchor_t.best * 1e3:7.2f}"
                f" {ratio:11.2f} {vs_elem:14.2f}  {anchor} {mode if anchor == 'timm' else 'batch (roll)'}"
            )
        for key, timing in others.items():
            print(f"{key:18s} {timing.median * 1e3:8.2f} / {timing.best * 1e3:7.2f} ms (no anchor)")
    if device.type == "cpu":
        print("\n## CPU batch-mode fast paths against the general path on the same tensors (ms: median / best)")
        for batch, size in ((256, 32), (128, 224)):
            res = bench_fast_paths(batch, size, args.repeats)
            for kind in ("CutMix", "ResizeMix"):
                fast, general = res[f"{kind} fast"], res[f"{kind} general"]
                print(
                    f"B={batch} 3x{size}x{size} {kind:9s}: fast {fast.median * 1e3:7.2f} / {fast.best * 1e3:7.2f}"
                    f"  general {general.median * 1e3:7.2f} / {general.best * 1e3:7.2f}"
                    f"  general/fast (best) {general.best / fast.best:5.2f}"
                )
    print("\n## soft_cross_entropy vs F.cross_entropy with probability targets, forward + backward (us: median / best)")
    for batch, classes in ((256, 10), (256, 1000), (1024, 1000)):
        res = bench_loss(batch, classes, max(args.repeats * 4, 20), device)
        ce, ours = res["F.cross_entropy"], res["soft_cross_entropy"]
        print(
            f"B={batch:5d} C={classes:5d}: F.ce {ce.median * 1e6:8.1f} / {ce.best * 1e6:8.1f}  ours {ours.median * 1e6:8.1f} / {ours.best * 1e6:8.1f}"
            f"  F.ce/ours (best) {ce.best / ours.best:5.2f}"
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
