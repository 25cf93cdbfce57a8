"""Exact minimiser of a multi-label grid energy by enumeration, written with plain loops (test reference).

Energy (the form of PuzzleMix's ``graphcut_multi``, snu-mllab/PuzzleMix ``mixup.py`` at commit
7eba27e86fb053950f48c3935bdac8c1274e7c89): ``sum_p unary[p][k_p] + sum_edges w * (k_p - k_q)^2 / (L-1)^2``.
"""

from __future__ import annotations

import itertools


def energy(labels, unary, w_v, w_h):
    n, m, n_labels = len(unary), len(unary[0]), len(unary[0][0])
    total = 0.0
    for r in range(n):
        for c in range(m):
            total += float(unary[r][c][labels[r][c]])
            if r + 1 < n:
                total += float(w_v[r][c]) * (labels[r][c] - labels[r + 1][c]) ** 2 / (n_labels - 1) ** 2
            if c + 1 < m:
                total += float(w_h[r][c]) * (labels[r][c] - labels[r][c + 1]) ** 2 / (n_labels - 1) ** 2
    return total


def brute_force(unary, w_v, w_h):
    """(best energy, best labels as nested lists) of one instance given as nested lists/arrays."""
    n, m, n_labels = len(unary), len(unary[0]), len(unary[0][0])
    best = (float("inf"), None)
    for flat in itertools.product(range(n_labels), repeat=n * m):
        labels = [list(flat[r * m : (r + 1) * m]) for r in range(n)]
        e = energy(labels, unary, w_v, w_h)
        if e < best[0]:
            best = (e, labels)
    return best
