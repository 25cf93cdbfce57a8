"""C-Mixup's partner sampling rate as the authors' code computes it (test-only reference).

Follows ``get_mixup_sample_rate`` in src/algorithm.py of huaxiuyao/C-Mixup at commit
0b88fb314075dbb2bebf4c6041a8116fb7604762 (re-written minimally, not copied): for every training
sample ``i`` a scikit-learn ``KernelDensity`` (Gaussian kernel, the data set's bandwidth) is fitted
on the single label ``y_i``; the rate of ``j`` is ``exp(score_samples(y_j))`` normalised over all
``j`` (``i`` itself included). ``train`` then draws, for every anchor of a batch, its partner with
``np.random.choice(N, p=rate[i])`` and mixes the batch with one ``lam ~ Beta(alpha, alpha)``.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KernelDensity


def authors_mixup_sample_rate(labels: np.ndarray, bandwidth: float) -> np.ndarray:
    """The (N, N) row-stochastic rate matrix; ``labels`` (N,) or (N, d)."""
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    rows = []
    for i in range(len(y)):  # one density per anchor, as the authors
        density = KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(y[i : i + 1])
        rate = np.exp(density.score_samples(y))
        rows.append(rate / rate.sum())
    return np.stack(rows)
