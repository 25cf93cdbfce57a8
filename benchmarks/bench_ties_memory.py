"""Peak memory and time of TIES over checkpoints on disk: streaming per tensor vs whole-model flattening.

Writes a base model and ``--models`` fine-tuned models (``--params`` float32 parameters each, shaped
like a transformer: embedding, attention and MLP matrices, biases, norms) to a temporary folder, then
runs, each in a fresh subprocess so that peak resident memory (``VmHWM``) is its own:

- ``import``: Python + torch + lightning_mix imported, nothing else (the floor every run pays);
- ``streaming``: ``lightning_mix.merging.ties`` over the memory-mapped files, one tensor at a
  time, then ``torch.save`` of the result (what ``lightning-mix merge`` does);
- ``flattening``: the usual whole-model approach (as in FusionBench-style scripts): load every
  state dict, flatten each into one vector, stack the task vectors, trim with a global top-k per
  task (``kthvalue``, since ``torch.quantile`` fails above 2^24 elements), elect, disjoint mean,
  unflatten, save.

Prints peak RSS in model sizes (``params * 4`` bytes) and seconds, and the ratios against the
baseline measured in the same run. The files are deleted at the end.

    python benchmarks/bench_ties_memory.py --params 100_000_000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def model_shapes(params: int, width: int) -> dict[str, tuple[int, ...]]:
    """Transformer-like tensor shapes adding up to about ``params`` parameters."""
    per_layer = 12 * width * width + 13 * width
    layers = max(1, params // per_layer)  # the embedding takes the rest (less than one layer)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        p = f"layers.{i}."
        for n in ("q", "k", "v", "o"):
            shapes[p + f"attn.{n}.weight"] = (width, width)
            shapes[p + f"attn.{n}.bias"] = (width,)
        shapes[p + "mlp.fc1.weight"] = (4 * width, width)
        shapes[p + "mlp.fc1.bias"] = (4 * width,)
        shapes[p + "mlp.fc2.weight"] = (width, 4 * width)
        shapes[p + "mlp.fc2.bias"] = (width,)
        shapes[p + "norm1.weight"] = (width,)
        shapes[p + "norm2.weight"] = (width,)
    rest = params - sum(math.prod(s) for s in shapes.values())
    shapes["embed.weight"] = (max(1, rest // width), width)
    return shapes


def write_models(folder: str, params: int, width: int, models: int) -> list[str]:
    import torch

    shapes = model_shapes(params, width)
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) * 0.02 for n, s in shapes.items()}
    base["step"] = torch.tensor(1000)
    paths = [os.path.join(folder, "base.ckpt")]
    torch.save({"state_dict": base, "hyper_parameters": {"width": width}}, paths[0])
    for i in range(models):
        sd = {
            n: (t + torch.randn(t.shape, generator=gen) * 1e-3 if t.is_floating_point() else t) for n, t in base.items()
        }
        paths.append(os.path.join(folder, f"ft{i}.ckpt"))
        torch.save({"state_dict": sd, "hyper_parameters": {"width": width}}, paths[-1])
        del sd
    return paths


def run_streaming(paths: list[str], density: float, out: str) -> None:
    import torch

    from lightning_mix.merging import ties

    merged = ties(paths[0], paths[1:], density=density, lam=1.0)
    torch.save({"state_dict": merged}, out)


def run_flattening(paths: list[str], density: float, out: str) -> None:
    import torch

    states = [torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in paths]
    names = [n for n, t in states[0].items() if t.is_floating_point()]
    flat = [torch.cat([s[n].reshape(-1) for n in names]) for s in states]
    tau = torch.stack([f - flat[0] for f in flat[1:]])
    n = tau.shape[1]
    k = max(1, math.ceil(density * n))
    threshold = tau.abs().kthvalue(n - k + 1, dim=1, keepdim=True).values
    trimmed = tau * (tau.abs() >= threshold)
    elected = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    merged_flat = flat[0] + (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1)
    merged, offset = {}, 0
    for name, t in states[0].items():
        if t.is_floating_point():
            merged[name] = merged_flat[offset : offset + t.numel()].view_as(t).clone()
            offset += t.numel()
        else:
            merged[name] = t.clone()
    torch.save({"state_dict": merged}, out)


class AnonymousPeak:
    """Samples ``RssAnon`` (memory the process itself allocated, not file pages) every 5 ms in a thread.

    ``VmHWM`` also counts the pages of memory-mapped input files that were read; those are clean
    page cache the kernel reclaims when it needs memory, so the anonymous peak is what a merge
    really needs.
    """

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def peak_rss_bytes() -> int:
    """This process image's peak resident set (``VmHWM``; unlike ``ru_maxrss`` it is reset by ``exec``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def child(mode: str, paths: list[str], density: float, out: str) -> None:
    import torch

    if mode == "write":
        params, width, models = (int(v) for v in out.split(","))
        write_models(paths[0], params, width, models)
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    import lightning_mix.merging  # noqa: F401  (same imports in every child)
    # glibc's allocator setting is the environment's (MALLOC_MMAP_THRESHOLD_=131072 fixes it for every
    # run alike); the library no longer changes it

    sampler = AnonymousPeak()
    start = time.perf_counter()
    if mode == "streaming":
        run_streaming(paths, density, out)
    elif mode == "flattening":
        run_flattening(paths, density, out)
    seconds = time.perf_counter() - start
    anon = sampler.stop()
    peak = peak_rss_bytes()
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_bytes": peak, "anon_bytes": anon}))


THREADS = 1


def measure(mode: str, paths: list[str], density: float, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--density", str(density), "--out", out, "--paths", *paths]
    result = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env=dict(os.environ, BENCH_THREADS=str(THREADS))
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=100_000_000, help="parameters per model (issue: 500M)")
    parser.add_argument("--width", type=int, default=1024, help="hidden size of the synthetic transformer")
    parser.add_argument("--models", type=int, default=3, help="fine-tuned models merged into the base")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in each run (1: on a shared machine, waiting for descheduled "
        "worker threads dominates the many small per-tensor operations)",
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="only the streaming merge (for sizes the baseline cannot hold)"
    )
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoints (default: system temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.paths, args.density, args.out)
        return

    global THREADS
    THREADS = args.threads
    folder = tempfile.mkdtemp(prefix="bench_ties_", dir=args.dir)
    try:
        t0 = time.perf_counter()
        # the files are written by a child so that this process stays small (children inherit nothing)
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "write",
                "--out",
                f"{args.params},{args.width},{args.models}",
                "--paths",
                folder,
            ],
            check=True,
        )
        paths = [os.path.join(folder, "base.ckpt")] + [os.path.join(folder, f"ft{i}.ckpt") for i in range(args.models)]
        shapes = model_shapes(args.params, args.width)
        params = sum(math.prod(s) for s in shapes.values())
        largest = max(math.prod(s) for s in shapes.values())
        size = params * 4
        print(
            f"{args.models} fine-tuned models + base, {params / 1e6:.1f}M float32 parameters each "
            f"({size / 2**30:.2f} GiB; largest tensor {largest / 1e6:.1f}M), density {args.density}, "
            f"{args.threads} thread(s); "
            f"files written in {time.perf_counter() - t0:.0f} s"
        )
        out = os.path.join(folder, "merged.ckpt")
        floor = measure("import", paths, args.density, out)
        rows = [floor, measure("streaming", paths, args.density, out)]
        if not args.skip_baseline:
            rows.append(measure("flattening", paths, args.density, out))
        print(
            f"{'run':<12} {'peak RSS GiB':>12} {'model sizes':>12} {'net of import':>14} "
            f"{'anon GiB':>9} {'anon net':>9} {'seconds':>8}"
        )
        for r in rows:
            net = (r["peak_bytes"] - floor["peak_bytes"]) / size
            anon_net = (r["anon_bytes"] - floor["anon_bytes"]) / size
            print(
                f"{r['mode']:<12} {r['peak_bytes'] / 2**30:>12.2f} {r['peak_bytes'] / size:>12.2f} {net:>14.2f} "
                f"{r['anon_bytes'] / 2**30:>9.2f} {anon_net:>9.2f} {r['seconds']:>8.1f}"
            )
        if not args.skip_baseline:
            s, f = rows[1], rows[2]
            print(
                f"streaming / flattening: peak memory {s['peak_bytes'] / f['peak_bytes']:.2f}x, time {s['seconds'] / f['seconds']:.2f}x"
            )
        net = (rows[1]["anon_bytes"] - floor["anon_bytes"]) / size
        print(
            f"target peak <= 2.5 model sizes: streaming allocates {net:.2f} model sizes above the import floor "
            "(anonymous memory; mapped input pages are reclaimable page cache) -> "
            f"{'met' if net <= 2.5 else 'NOT met'}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
