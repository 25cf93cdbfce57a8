"""A merging study on the embedded MNIST5k data, plus the loss barrier before and after alignment.

Part 1, merging tasks. A SmallCNN base is trained on upright digits; copies are fine-tuned on three
tasks (digits rotated by 90 degrees, inverted intensities, flipped upside down). The fine-tuned
models are merged with every method of ``lightning_mix.averaging`` and each merged model is tested
on every task; BatchNorm statistics are recomputed on the (unlabeled) training images of all tasks
(2048 images) after every merge. Methods with a scale ``lam`` pick it from {0.3, 0.5, 0.7, 1.0} by mean validation
accuracy; other options are the authors' defaults. Reference rows: the base, each fine-tuned model
on its own task, and one model fine-tuned jointly on all three tasks with the same total steps.

Part 2, the linear-interpolation loss barrier between two SmallCNNs trained from different seeds on
upright digits, before and after permutation alignment (weight matching), with BatchNorm
recalibrated at every point: ``max_t [L(t) - ((1 - t) L(0) + t L(1))]`` on the test set.

    python benchmarks/merging_study.py            # ~5-8 minutes on 2 shared CPU cores
    python benchmarks/merging_study.py --scenario subsets --base-steps 60 --skip-barrier

With ``--scenario subsets`` the base is trained on all upright digits and the tasks are the digit
subsets 0-3, 4-6 and 7-9 (tested on their own digits, 10-way).

Over seeds, with intervals and paired tests: ``--seed S`` shifts every seed of the study (training
batches, DARE's masks, the BatchNorm and Fisher samples; ``--seed 0`` is the single-seed run above),
and ``--predictions DIR`` stores each model's class probabilities on the concatenated test images
of all tasks in ``lightning-mix compare``'s layout (``DIR/METHOD/seed=S/predictions.pt``), so that

    for s in 0 1 2 3 4; do python benchmarks/merging_study.py --seed $s --skip-barrier --predictions benchmarks/studies/merging; done
    lightning-mix compare --stored --output benchmarks/studies/merging --seeds 0 1 2 3 4 --method uniform_soup \
        --method task_arithmetic --method ties ...

reports every merge against the uniform soup (``benchmarks/studies.sh merging`` runs both steps).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_mix.averaging import recalibrate_batchnorm, weight_matching
from lightning_mix.cli.compare import store_predictions
from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.merging import (
    adamerging,
    consensus,
    dare,
    fisher,
    fisher_information,
    model_stock,
    pcb,
    regmean,
    regmean_grams,
    task_arithmetic,
    ties,
    weighted_average,
)

MEAN, STD = 0.1307, 0.3081
TASKS = {
    "rotated": lambda x: torch.rot90(x, 1, dims=(2, 3)),
    "inverted": lambda x: 1.0 - x,
    "upside-down": lambda x: torch.flip(x, dims=(2,)),
}
SUBSETS = {"digits 0-3": (0, 1, 2, 3), "digits 4-6": (4, 5, 6), "digits 7-9": (7, 8, 9)}
LAMS = (0.3, 0.5, 0.7, 1.0)


def data(scenario: str):
    dm = MNIST5kDataModule(normalize=False, random_shift=0)  # the tasks transform fixed images
    dm.setup("fit")
    split = {
        name: (ds.tensors[0], ds.tensors[1])
        for name, ds in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set))
    }
    out = {"upright": {k: ((x - MEAN) / STD, y) for k, (x, y) in split.items()}}
    if scenario == "subsets":
        for task, labels in SUBSETS.items():
            keep = {k: torch.isin(y, torch.tensor(labels)) for k, (x, y) in split.items()}
            out[task] = {k: ((x[keep[k]] - MEAN) / STD, y[keep[k]]) for k, (x, y) in split.items()}
        return out
    for task, fn in TASKS.items():
        out[task] = {k: ((fn(x) - MEAN) / STD, y) for k, (x, y) in split.items()}
    return out


def train(model, x, y, steps, lr, seed, batch=64):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    logits = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)])
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def load(model, state, bn_images=None):
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    if bn_images is not None:
        recalibrate_batchnorm(m, [bn_images[i : i + 256] for i in range(0, len(bn_images), 256)])
    return m.eval()


def task_accuracies(model, d, split):
    return {t: evaluate(model, *d[t][split])[0] for t in TASKS}


@torch.no_grad()
def test_probabilities(models, d):
    """``{task: (class probabilities, labels)}`` on each task's test images, in TASKS order.

    ``models`` is one model for every task, or ``{task: model}`` (each fine-tuned model on its task).
    """
    out = {}
    for t in TASKS:
        model = models[t] if isinstance(models, dict) else models
        x, y = d[t]["test"]
        model.eval()
        out[t] = (torch.cat([model(x[i : i + 500]).softmax(-1) for i in range(0, len(x), 500)]), y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument(
        "--kernel-size", type=int, default=3, help="SmallCNN's kernel_size (3: the network of the docs' tables)"
    )
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--ft-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--bn-images", type=int, default=2048, help="training images used to recompute BatchNorm statistics"
    )
    parser.add_argument("--ada-steps", type=int, default=200, help="AdaMerging steps")
    parser.add_argument("--ada-lr", type=float, default=1e-3, help="AdaMerging Adam learning rate (authors: 1e-3)")
    parser.add_argument(
        "--scenario",
        choices=["transforms", "subsets"],
        default="transforms",
        help="tasks: rotated / inverted / upside-down images, or digit subsets (0-3, 4-6, 7-9)",
    )
    parser.add_argument("--skip-merging", action="store_true")
    parser.add_argument("--skip-barrier", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="shifts every seed of the merging part (0: the docs' run)")
    parser.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="store each model's test probabilities as DIR/METHOD/seed=SEED/predictions.pt (lightning-mix compare)",
    )
    args = parser.parse_args()
    if args.predictions is not None and args.skip_merging:
        parser.error("--predictions stores the merged models' predictions: it cannot go with --skip-merging")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    global TASKS
    if args.scenario == "subsets":
        TASKS = dict(SUBSETS)
    d = data(args.scenario)

    if not args.skip_merging:
        shift = 100 * args.seed  # seed 0 keeps the seeds of the single-seed run
        torch.manual_seed(shift)
        base = train(
            SmallCNN(width=args.width, kernel_size=args.kernel_size),
            *d["upright"]["train"],
            steps=args.base_steps,
            lr=2e-3,
            seed=shift,
        )
        base_sd = copy.deepcopy(base.state_dict())
        finetuned = {
            t: train(copy.deepcopy(base), *d[t]["train"], steps=args.ft_steps, lr=1e-3, seed=shift + i + 1)
            for i, t in enumerate(TASKS)
        }
        ft_sds = [copy.deepcopy(m.state_dict()) for m in finetuned.values()]
        joint_x = torch.cat([d[t]["train"][0] for t in TASKS])
        joint_y = torch.cat([d[t]["train"][1] for t in TASKS])
        joint = train(copy.deepcopy(base), joint_x, joint_y, steps=args.ft_steps * len(TASKS), lr=1e-3, seed=shift + 9)
        permutation = torch.randperm(len(joint_x), generator=torch.Generator().manual_seed(shift))
        bn_images = joint_x[permutation[: args.bn_images]]
        print(f"trained base, {len(TASKS)} fine-tuned and joint models in {time.perf_counter() - start:.0f} s")

        rows: list[tuple[str, dict[str, float], str]] = []

        def report(name, folder, model, note=""):
            """A table row for ``model`` (or ``{task: model}``), and its stored predictions with --predictions.

            One pass over the test images gives both: the accuracies are read from the probabilities.
            """
            per_task = test_probabilities(model, d)
            rows.append((name, {t: float((p.argmax(-1) == y).float().mean()) for t, (p, y) in per_task.items()}, note))
            if args.predictions is not None:
                probs = torch.cat([p for p, _ in per_task.values()])
                labels = torch.cat([y for _, y in per_task.values()])
                store_predictions(args.predictions / folder / f"seed={args.seed}", probs, labels, args.seed)

        report("base (upright only)", "base", base)
        report("fine-tuned, own task", "finetuned_own_task", finetuned, "one model per column")
        report("jointly fine-tuned", "joint", joint, f"{args.ft_steps * len(TASKS)} steps on all tasks")

        def add(name, folder, make, note="", sweep=True):
            if sweep:
                best = None
                for lam in LAMS:
                    m = load(base, make(lam), bn_images)
                    val = sum(task_accuracies(m, d, "val").values()) / len(TASKS)
                    if best is None or val > best[0]:
                        best = (val, lam, m)
                _, lam, m = best
                note = f"{note}{', ' if note else ''}lam={lam}"
            else:
                m = load(base, make(None), bn_images)
            report(name, folder, m, note)
            print(f"  {name}: done ({time.perf_counter() - start:.0f} s)")

        add("average (uniform soup)", "uniform_soup", lambda _: weighted_average(ft_sds), sweep=False)
        plain = load(base, task_arithmetic(base_sd, ft_sds, 0.3))
        report("task arithmetic, no BN recalibration", "task_arithmetic_no_bn", plain, "lam=0.3")
        add("task arithmetic", "task_arithmetic", lambda lam: task_arithmetic(base_sd, ft_sds, lam))
        add("TIES", "ties", lambda lam: ties(base_sd, ft_sds, density=0.2, lam=lam), "density=0.2")
        add(
            "DARE + task arithmetic",
            "dare_task_arithmetic",
            lambda lam: dare(base_sd, ft_sds, p=0.5, lam=lam, seed=shift),
            "p=0.5",
        )
        add(
            "DARE + TIES",
            "dare_ties",
            lambda lam: dare(base_sd, ft_sds, p=0.5, lam=lam, merge="ties", seed=shift),
            "p=0.5",
        )
        add("Model Stock", "model_stock", lambda _: model_stock(base_sd, ft_sds), sweep=False)
        add("PCB", "pcb", lambda lam: pcb(base_sd, ft_sds, keep_ratio=0.1, lam=lam), "keep_ratio=0.1")
        add(
            "consensus (TALL, k=2)",
            "consensus",
            lambda lam: consensus(base_sd, ft_sds, k=2, mask_lam=0.4, lam=lam),
            "mask_lam=0.4",
        )

        gen = torch.Generator().manual_seed(shift)
        fishers = []
        for t, m in finetuned.items():
            x = d[t]["train"][0][:256]
            fishers.append(
                fisher_information(m, [(x[i : i + 64],) for i in range(0, 256, 64)], num_examples=256, generator=gen)
            )
        add("Fisher", "fisher", lambda _: fisher(ft_sds, fishers), "256 examples per task, labels sampled", sweep=False)
        grams = [regmean_grams(m, [d[t]["train"][0][:512]]) for t, m in finetuned.items()]
        add(
            "RegMean",
            "regmean",
            lambda _: regmean(ft_sds, grams, alpha=0.95),
            "alpha=0.95; only the head is linear",
            sweep=False,
        )
        test_inputs = torch.cat([d[t]["test"][0] for t in TASKS])
        stream = [
            test_inputs[torch.randperm(len(test_inputs), generator=torch.Generator().manual_seed(shift + s))[:64]]
            for s in range(50)
        ]
        ada_sd, coef = adamerging(
            copy.deepcopy(base),
            base_sd,
            ft_sds,
            stream,
            granularity="layer",
            steps=args.ada_steps,
            lr=args.ada_lr,
            get_inputs=lambda b: b,
            batch_statistics=True,
        )
        add(
            "AdaMerging (layer-wise)",
            "adamerging",
            lambda _: ada_sd,
            f"{args.ada_steps} steps, lr {args.ada_lr:g}, batch statistics, entropy on unlabeled test images; "
            f"mean coefficient {float(coef.mean()):.2f}",
            sweep=False,
        )

        print(f"\n| model | {' | '.join(TASKS)} | mean | notes |")
        print("|---|" + "---|" * (len(TASKS) + 2))
        for name, acc, note in rows:
            vals = [acc[t] for t in TASKS]
            print(
                f"| {name} | {' | '.join(f'{100 * v:.1f}' for v in vals)} | {100 * sum(vals) / len(vals):.1f} | {note} |"
            )
        print(f"\nmerging part: {time.perf_counter() - start:.0f} s\n")

    if not args.skip_barrier:
        x, y = d["upright"]["train"]
        xt, yt = d["upright"]["test"]
        models = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            models.append(
                train(
                    SmallCNN(width=args.width, kernel_size=args.kernel_size),
                    x,
                    y,
                    steps=args.base_steps,
                    lr=2e-3,
                    seed=seed,
                )
            )
        a, b = models
        aligned = weight_matching(a, b, example_input=x[:8])
        with torch.no_grad():
            same = torch.allclose(aligned(xt[:256]), b(xt[:256]), atol=1e-4)
        ts = [i / 10 for i in range(11)]

        def curve(other):
            sa, sb = a.state_dict(), other.state_dict()
            out = []
            for t in ts:
                sd = weighted_average([sa, sb], [1 - t, t])
                out.append(evaluate(load(a, sd, x[: args.bn_images]), xt, yt))
            return out

        for name, other in (("naive", b), ("aligned", aligned)):
            c = curve(other)
            losses = [loss for _, loss in c]
            barrier = max(loss - ((1 - t) * losses[0] + t * losses[-1]) for t, loss in zip(ts, losses))
            print(
                f"{name:8s} barrier {barrier:.3f} nats; endpoints loss {losses[0]:.3f} / {losses[-1]:.3f}; "
                f"midpoint loss {losses[5]:.3f}, acc {100 * c[5][0]:.1f}% (endpoints {100 * c[0][0]:.1f}% / {100 * c[-1][0]:.1f}%)"
            )
        print(f"aligned B computes the same function as B: {same}")
        print(f"total: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
