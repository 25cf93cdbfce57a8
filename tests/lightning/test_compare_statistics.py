"""compare's vectorised resample statistics equal the one-sample metrics on every resample."""

from __future__ import annotations

import pytest
import torch

from lightning_mix.cli import _compare_statistics as V
from lightning_mix.evaluation import aurc
from lightning_mix.metrics import functional as CF


def _resamples(seeds=2, n=300, c=5, chunk=7):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=g)
    probs = (torch.randn(seeds, n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, c)).softmax(-1)
    probs[0, :10] = probs[0, 10:20]  # ties in confidence: AURC's order must be the stable one
    index = torch.randint(n, (chunk, n), generator=g)
    return probs, labels, index


def _gather(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return features.index_select(0, index.reshape(-1)).reshape(*index.shape, features.shape[-1])


def test_each_statistic_equals_its_one_sample_metric_on_each_resample():
    probs, labels, index = _resamples()
    for s in range(probs.shape[0]):  # (calibration_error returns float32: rel 1e-6 for ECE)
        p = probs[s]
        sigma = CF.smooth_ece(p, labels, input="probs", return_bandwidth=True)[1]
        got = {
            "ece": V.vectorised_ece(_gather(V.ece_features(probs, labels)[s], index), None),
            "aurc": V.vectorised_aurc(_gather(V.aurc_features(probs, labels)[s], index), None),
            "smece": V.vectorised_smece(sigma)(_gather(V.smece_features(probs, labels)[s], index), None),
        }
        for row, rows in enumerate(index):
            q, t = p[rows], labels[rows]
            conf, pred = q.max(-1)
            conf_c, correct = CF.top_label_confidence(q, t, input="probs")
            weights = torch.stack([conf_c.double() - correct.double(), torch.ones_like(conf_c, dtype=torch.float64)])
            expected = {
                "ece": float(CF.calibration_error(q, t, n_bins=15, input="probs")),
                "aurc": float(aurc(conf, (pred != t).double())),
                "smece": CF.smooth_ece_at(conf_c.double(), weights, sigma),
            }
            for name, value in expected.items():
                assert float(got[name][row]) == pytest.approx(value, rel=1e-6 if name == "ece" else 1e-9, abs=1e-12), (
                    name,
                    s,
                    row,
                )
