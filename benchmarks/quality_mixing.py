"""Quality of the model-level mixing methods on the embedded data, against ERM trained the same way.

    python benchmarks/quality_mixing.py                    # 2 seeds, 4 epochs: about 5 CPU minutes
    python benchmarks/quality_mixing.py --seeds 0 1 2 --epochs 8 --json results.json

MNIST5k (clean, and with 30% symmetric label noise on the training labels), an MLP with named
layers ``fc1``/``fc2`` (so Manifold Mixup can hook them), AdamW 1e-3, batch 128:

- ERM: plain cross-entropy;
- Mixup: ``MixingCallback(Mixup(alpha=1.0))``;
- Manifold Mixup: ``ManifoldMixup(layers=["input", "fc1", "fc2"], alpha=2.0)``;
- RegMixup: ``RegMixup(alpha=10.0)``;
- RankMixup MRL / M-NDCG: ``RankMixupMixin`` with the authors' defaults (w 0.1, margin 2, alpha 2, K 1 / 3).

Reported on the 1000 test digits: accuracy, NLL, 15-bin ECE and AdaECE (equal-mass bins), and the
median CPU time of a training step (batch start to batch end, mixing included) relative to ERM,
measured in a separate phase (25 steps per method, best of 3 round-robin passes, one thread).
Diabetes (regression, MLPRegressor, 40 epochs): ERM, Mixup (alpha 2) and C-Mixup
(``Mixup(alpha=2, mode="elem", pairing="label_kernel", bandwidth=...)``), test RMSE in
standardised units. Mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.callbacks.manifold_mixup import ManifoldMixup
from lightning_mix.callbacks.mixing import MixingCallback
from lightning_mix.callbacks.regmixup import RegMixup
from lightning_mix.demos import DiabetesDataModule, MLPRegressor, MNIST5kDataModule
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.metrics import calibration_error
from lightning_mix.mixing import Mixup
from lightning_mix.mixins import RankMixupMixin

from _harness import quiet_trainer


class MLPClassifier(pl.LightningModule):
    """784-256-256-10 MLP with named hidden layers; trains with soft cross-entropy (dense targets welcome)."""

    def __init__(self, hidden: int = 256, lr: float = 1e-3, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(self.fc1(x)))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return soft_cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=5e-4)


class RankMixupMLP(RankMixupMixin, MLPClassifier):
    def __init__(self, loss: str = "mrl") -> None:
        super().__init__()
        self.configure_rank_mixup(loss=loss)


class StepTimer(pl.Callback):
    """CPU time of the process from the start of a training batch (before other callbacks mix it) to its end.

    Process CPU time rather than wall time, and the median over steps, because the benchmark
    machine is shared: other jobs stretch wall time but not the work this process does.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.process_time() - self._start)

    def mean_step(self) -> float:
        times = self.times[5:] or self.times  # skip warm-up steps
        return statistics.median(times)


def _trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return quiet_trainer(
        devices=1,
        max_epochs=epochs,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


CLASSIFICATION = {
    "ERM": lambda: (MLPClassifier(), []),
    "Mixup (a=1)": lambda: (MLPClassifier(), [MixingCallback(Mixup(alpha=1.0), num_classes=10, seed=0)]),
    "Manifold Mixup (a=2)": lambda: (
        MLPClassifier(),
        [ManifoldMixup(layers=["input", "fc1", "fc2"], alpha=2.0, num_classes=10, seed=0)],
    ),
    "RegMixup (a=10)": lambda: (MLPClassifier(), [RegMixup(alpha=10.0, num_classes=10, seed=0)]),
    "RankMixup MRL": lambda: (RankMixupMLP("mrl"), []),
    "RankMixup M-NDCG": lambda: (RankMixupMLP("mndcg"), []),
}


@torch.no_grad()
def _test_logits(model: pl.LightningModule, data: MNIST5kDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    xs, ys = data.test_set.tensors
    return model(xs), ys


def run_classification(method: str, noise: float, seed: int, epochs: int) -> dict[str, float]:
    pl.seed_everything(seed, verbose=False)
    model, callbacks = CLASSIFICATION[method]()
    timer = StepTimer()
    data = MNIST5kDataModule(batch_size=128, label_noise=noise, seed=0)
    _trainer(epochs, [timer, *callbacks]).fit(model, data)
    return _test_metrics(model, data, timer)


def _test_metrics(model: pl.LightningModule, data: MNIST5kDataModule, timer: StepTimer) -> dict[str, float]:
    logits, labels = _test_logits(model, data)
    return {
        "acc": (logits.argmax(-1) == labels).float().mean().item(),
        "nll": F.cross_entropy(logits, labels).item(),
        "ece": calibration_error(logits, labels, n_bins=15).item(),
        "adaece": calibration_error(logits, labels, n_bins=15, binning="quantile").item(),
        "step_s": timer.mean_step(),
    }


def time_steps(rounds: int, steps: int) -> dict[str, float]:
    """Median CPU time per training step of each method, best of ``rounds`` round-robin passes.

    Round-robin so that every method meets the same background load; the best pass is the one
    least disturbed by the other jobs of a shared machine.
    """
    best: dict[str, float] = {}
    for _ in range(rounds):
        for method in CLASSIFICATION:
            pl.seed_everything(0, verbose=False)
            model, callbacks = CLASSIFICATION[method]()
            timer = StepTimer()
            trainer = _trainer(1, [timer, *callbacks])
            trainer.limit_train_batches = steps
            trainer.fit(model, MNIST5kDataModule(batch_size=128))
            best[method] = min(best.get(method, float("inf")), timer.mean_step())
    return best


REGRESSION = {
    "ERM": lambda bw: [],
    "Mixup (a=2)": lambda bw: [
        MixingCallback(Mixup(alpha=2.0, mode="elem", pairing="random"), seed=0, regression=True)
    ],
    "C-Mixup (a=2)": lambda bw: [
        MixingCallback(Mixup(alpha=2.0, mode="elem", pairing="label_kernel", bandwidth=bw), seed=0, regression=True)
    ],
}


def run_regression(method: str, seed: int, epochs: int, bandwidth: float) -> dict[str, float]:
    pl.seed_everything(seed, verbose=False)
    model = MLPRegressor(hidden=64, depth=2, lr=3e-3)
    data = DiabetesDataModule(batch_size=32, seed=0)
    _trainer(epochs, REGRESSION[method](bandwidth)).fit(model, data)
    model.eval()
    with torch.no_grad():
        x, y = data.test_set.tensors
        rmse = F.mse_loss(model(x).reshape(y.shape), y).sqrt().item()
    return {"rmse": rmse}


def _summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--reg-epochs", type=int, default=40)
    parser.add_argument("--bandwidth", type=float, default=0.5, help="C-Mixup kernel width (standardised targets)")
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--timing-steps", type=int, default=25)
    parser.add_argument("--timing-only", action="store_true", help="only the step-time phase")
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    # One intra-op thread: process CPU time then measures the work itself (idle OpenMP workers spin
    # and would be counted), and the runs do not fight the other jobs of a shared machine.
    torch.set_num_threads(1)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    results: dict = {"classification": {}, "regression": {}}
    start = time.perf_counter()
    run_classification("ERM", 0.0, 0, 1)  # warm-up (allocator, kernels): the first timed run is not penalised
    step = time_steps(args.timing_rounds, args.timing_steps)
    results["step_cpu_s"] = step
    if args.timing_only:
        print("| method | CPU time per step (ms) | relative to ERM |")
        print("|---|---|---|")
        for method, seconds in step.items():
            print(f"| {method} | {1000 * seconds:.2f} | {seconds / step['ERM']:.2f}x |")
        return
    for noise in args.noise:
        rows = {m: [run_classification(m, noise, s, args.epochs) for s in args.seeds] for m in CLASSIFICATION}
        results["classification"][str(noise)] = rows
        print(f"\nMNIST5k, label_noise={noise}, {len(args.seeds)} seeds, {args.epochs} epochs")
        print("| method | accuracy | NLL | ECE (15 bins) | AdaECE | CPU time per step / ERM |")
        print("|---|---|---|---|---|---|")
        for method, runs in rows.items():
            cells = [_summary([r[k] for r in runs]) for k in ("acc", "nll", "ece", "adaece")]
            print(f"| {method} | {' | '.join(cells)} | {step[method] / step['ERM']:.2f}x |", flush=True)
    rows = {m: [run_regression(m, s, args.reg_epochs, args.bandwidth) for s in args.seeds] for m in REGRESSION}
    results["regression"] = rows
    print(f"\nDiabetes, {len(args.seeds)} seeds, {args.reg_epochs} epochs, C-Mixup bandwidth {args.bandwidth}")
    print("| method | test RMSE (standardised) |")
    print("|---|---|")
    for method, runs in rows.items():
        print(f"| {method} | {_summary([r['rmse'] for r in runs])} |")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump(results, handle, indent=1)
        import os

        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
