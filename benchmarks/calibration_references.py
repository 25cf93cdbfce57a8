"""Maximum differences of the calibration metrics against their reference implementations.

Prints one Markdown row per metric: the reference, the largest absolute difference over 20 random
data sets (1,500 samples, 6 classes, logits of three temperatures), computed in float64. The table
in docs/benchmarks/calibration.md comes from this script:

    python benchmarks/calibration_references.py
"""

from __future__ import annotations

import calibration as vc  # uncertainty-calibration
import numpy as np
import relplot
import torch
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from lightning_mix.metrics import brier_score, calibration_error, negative_log_likelihood, smooth_ece


def _data(seed: int, scale: float, n: int = 1500, c: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z * scale, y


def main() -> None:
    rows: dict[str, tuple[str, list[float]]] = {}

    def record(name: str, reference: str, ours: float, theirs: float) -> None:
        rows.setdefault(name, (reference, []))[1].append(abs(float(ours) - float(theirs)))

    for seed in range(20):
        logits, y = _data(seed, scale=(0.5, 1.0, 2.0)[seed % 3])
        probs = logits.softmax(-1)
        for norm in ("l1", "l2", "max"):
            ours = calibration_error(probs, y, n_bins=15, norm=norm, input="probs")
            theirs = multiclass_calibration_error(probs, y, num_classes=6, n_bins=15, norm=norm)
            record(
                f"ECE top-label, norm={norm}, 15 uniform bins",
                "torchmetrics 1.9 `multiclass_calibration_error`",
                ours,
                theirs,
            )
        ours = calibration_error(probs, y, 15, "l2", binning="quantile", kind="marginal", debias=True, input="probs")
        theirs = vc.get_calibration_error(probs.numpy(), y.numpy())
        record(
            "marginal l2 CE, debiased, 15 quantile bins",
            "uncertainty-calibration `get_calibration_error` (its defaults)",
            ours,
            theirs,
        )
        confidences = relplot.multiclass_logits_to_confidences(probs.numpy(), y.numpy(), probs=True)
        record("smECE (top-label)", "relplot `smECE`", smooth_ece(probs, y, input="probs"), relplot.smECE(*confidences))
        record(
            "NLL",
            "scikit-learn `log_loss`",
            negative_log_likelihood(logits, y),
            log_loss(y.numpy(), probs.numpy(), labels=list(range(6))),
        )
        onehot = np.eye(6)[y.numpy()]
        record(
            "Brier (sum over classes)",
            "numpy formula",
            brier_score(probs, y, input="probs"),
            ((probs.numpy() - onehot) ** 2).sum(1).mean(),
        )
    print("| metric | reference | max abs difference (20 data sets) |")
    print("|---|---|---|")
    for name, (reference, diffs) in rows.items():
        print(f"| {name} | {reference} | {max(diffs):.1e} |")


if __name__ == "__main__":
    main()
