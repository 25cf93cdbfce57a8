"""Peak memory of soups over ingredients stored on disk, against holding all K models.

A 100M-parameter model (an ``nn.Sequential`` of 6 ``Linear(4096, 4096)`` layers, 400 MB in float32)
is saved as K=8 ingredient files. Each measurement runs in a fresh subprocess, which reports its
peak resident set size (``ru_maxrss``, file-backed memory-mapped pages included) minus its RSS
after importing torch; the figure is given in model sizes (400 MB = 1.0).

- ``greedy (files)``: :func:`lightning_mix.averaging.greedy_soup` over the file paths (target: at
  most 3 model sizes); the evaluate callable is a cheap function of all weights (how far each
  layer's mean is from the shared base model's). Ingredients are base + noise + an offset that is
  zero for ingredients 0, 3 and 6 only, so every ingredient with an offset makes the average worse
  and is rejected (whether 0 and 6 join depends on the noise).
- ``uniform (files)``: :func:`lightning_mix.averaging.uniform_soup` over the file paths.
- ``naive greedy (all K loaded)``: the anchor: load every ingredient fully, then run the same
  greedy soup on the in-memory state dicts, as a soup that holds K models does.

Usage: ``python benchmarks/bench_soup_memory.py [--k 8] [--dir /tmp]``. Needs K x 400 MB of disk
(deleted afterwards) and about K + 2 model sizes of RAM for the anchor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS, WIDTH = 6, 4096  # 6 * (4096 * 4096 + 4096) = 100.7M parameters


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _evaluate_factory(reference: dict[str, float]):
    def evaluate(state_dict) -> float:
        # cheap but reads every weight: how far each layer's mean is from the shared base model's
        total = 0.0
        for key, value in state_dict.items():
            if key in reference:
                total += (float(value.float().mean()) - reference[key]) ** 2
        return -total

    return evaluate


def child(mode: str, directory: str, k: int) -> None:
    import torch

    from lightning_mix.averaging import greedy_soup, uniform_soup

    torch.set_num_threads(2)
    paths = [Path(directory) / f"ingredient-{i}.pt" for i in range(k)]
    baseline = _rss_bytes()
    start = time.perf_counter()
    evaluate = _evaluate_factory(json.loads((Path(directory) / "base_means.json").read_text()))
    if mode == "greedy":
        soup = greedy_soup(paths, evaluate)
        info = {"kept": soup.kept}
    elif mode == "uniform":
        soup = uniform_soup(paths)
        info = {}
    elif mode == "naive":
        states = [dict(torch.load(p, map_location="cpu", weights_only=True)) for p in paths]
        soup = greedy_soup(states, evaluate)
        info = {"kept": soup.kept}
    else:
        raise ValueError(mode)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"mode": mode, "baseline": baseline, "peak": peak, "seconds": seconds, **info}))


def make_ingredients(directory: Path, k: int) -> int:
    import torch

    g = torch.Generator().manual_seed(0)
    base = {}
    for i in range(LAYERS):
        base[f"{i}.weight"] = torch.randn(WIDTH, WIDTH, generator=g) * 0.02
        base[f"{i}.bias"] = torch.zeros(WIDTH)
    model_bytes = sum(t.numel() * t.element_size() for t in base.values())
    means = {key: float(value.mean()) for key, value in base.items() if key.endswith("weight")}
    (directory / "base_means.json").write_text(json.dumps(means))
    from lightning_mix.averaging import save_ingredient

    for j in range(k):
        # ingredient j = base + noise + an offset (0 for j = 0, 3, 6); averaging noise helps the
        # metric, offsets hurt it, so the greedy soup keeps only offset-free ones
        offset = 0.002 * (j % 3) * (1 if j % 2 else -1)
        state = {key: value + 0.01 * torch.randn(value.shape, generator=g) + offset for key, value in base.items()}
        save_ingredient(state, directory / f"ingredient-{j}.pt")
        del state
    return model_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--child", default=None)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.k)
        return
    directory = Path(tempfile.mkdtemp(prefix="soup_memory_", dir=args.dir))
    try:
        t0 = time.perf_counter()
        model_bytes = make_ingredients(directory, args.k)
        print(
            f"{args.k} ingredients of {model_bytes / 1e6:.0f} MB ({model_bytes // 4 / 1e6:.1f}M float32 parameters) "
            f"written in {time.perf_counter() - t0:.1f}s to {directory}"
        )
        rows = []
        for mode in ("greedy", "uniform", "naive"):
            env = dict(os.environ, OMP_NUM_THREADS="2")
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--data", str(directory), "--k", str(args.k)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            ratio = (result["peak"] - result["baseline"]) / model_bytes
            rows.append((mode, ratio, result))
        names = {
            "greedy": "greedy (files)",
            "uniform": "uniform (files)",
            "naive": f"naive greedy (all {args.k} loaded)",
        }
        print("\n| soup | peak memory above baseline | in model sizes | time | kept |")
        print("|---|---|---|---|---|")
        for mode, ratio, result in rows:
            extra = result.get("kept", "")
            print(
                f"| {names[mode]} | {(result['peak'] - result['baseline']) / 1e6:.0f} MB | {ratio:.2f} | "
                f"{result['seconds']:.1f}s | {extra} |"
            )
        greedy = rows[0][1]
        naive = rows[2][1]
        print(
            f"\ngreedy soup from files: {greedy:.2f} model sizes (target <= 3); {naive / greedy:.1f}x less than holding all {args.k}"
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
