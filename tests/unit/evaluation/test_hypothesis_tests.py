"""McNemar, Cochran's Q, 5x2cv t and F tests against mlxtend; Holm against a hand-worked example."""

import numpy as np
import pytest
import torch
from mlxtend.evaluate import cochrans_q as mlx_cochrans_q
from mlxtend.evaluate import combined_ftest_5x2cv as mlx_combined_ftest_5x2cv
from mlxtend.evaluate import mcnemar as mlx_mcnemar
from mlxtend.evaluate import mcnemar_table as mlx_mcnemar_table
from mlxtend.evaluate import paired_ttest_5x2cv as mlx_paired_ttest_5x2cv
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from lightning_mix.evaluation import (
    cochrans_q,
    combined_ftest_5x2cv,
    combined_ftest_5x2cv_from_scores,
    five_by_two_cv_scores,
    holm_correction,
    mcnemar,
    mcnemar_table,
    paired_ttest_5x2cv,
    paired_ttest_5x2cv_from_scores,
)


def _predictions(seed, n=200, accuracies=(0.9, 0.85, 0.8)):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 3, n)
    preds = [np.where(rng.random(n) < a, target, (target + 1) % 3) for a in accuracies]
    return target, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("exact,corrected", [(False, True), (False, False), (True, True)])
def test_mcnemar_matches_mlxtend(seed, exact, corrected):
    target, (a, b, _) = _predictions(seed, n=60 if exact else 200)
    ours_table = mcnemar_table(torch.from_numpy(target), torch.from_numpy(a), torch.from_numpy(b))
    mlx_table = mlx_mcnemar_table(target, a, b)
    np.testing.assert_array_equal(ours_table.numpy(), mlx_table)
    chi2, p = mcnemar(ours_table, corrected=corrected, exact=exact)
    mlx_chi2, mlx_p = mlx_mcnemar(mlx_table, corrected=corrected, exact=exact)
    assert p == pytest.approx(mlx_p, rel=1e-9)
    assert chi2 is None if exact else chi2 == pytest.approx(mlx_chi2)


@pytest.mark.parametrize("seed", [0, 3])
def test_cochrans_q_matches_mlxtend(seed):
    target, preds = _predictions(seed)
    q, p = cochrans_q(torch.from_numpy(target), *[torch.from_numpy(x) for x in preds])
    mlx_q, mlx_p = mlx_cochrans_q(target, *preds)
    assert q == pytest.approx(mlx_q)
    assert p == pytest.approx(mlx_p, rel=1e-9)


def _mlxtend_5x2_scores(est1, est2, x, y, seed):
    """The (5, 2) accuracy tables on exactly the splits mlxtend's 5x2cv functions draw."""
    rng = np.random.RandomState(seed)
    scores = np.zeros((2, 5, 2))
    for i in range(5):
        x1, x2, y1, y2 = train_test_split(x, y, test_size=0.5, random_state=rng.randint(low=0, high=32767))
        for fold, (tx, ty, ex, ey) in enumerate(((x1, y1, x2, y2), (x2, y2, x1, y1))):
            for j, est in enumerate((est1, est2)):
                scores[j, i, fold] = clone(est).fit(tx, ty).score(ex, ey)
    return torch.from_numpy(scores[0]), torch.from_numpy(scores[1])


@pytest.mark.parametrize("seed", [1, 7])
def test_5x2cv_statistics_match_mlxtend(seed):
    x, y = make_classification(n_samples=200, n_features=8, flip_y=0.1, random_state=seed)
    est1, est2 = LogisticRegression(max_iter=1000), DecisionTreeClassifier(max_depth=2, random_state=0)
    s1, s2 = _mlxtend_5x2_scores(est1, est2, x, y, seed)
    t, p = paired_ttest_5x2cv_from_scores(s1, s2)
    mlx_t, mlx_p = mlx_paired_ttest_5x2cv(est1, est2, x, y, random_seed=seed)
    assert (t, p) == pytest.approx((mlx_t, mlx_p), rel=1e-9)
    f, p = combined_ftest_5x2cv_from_scores(s1, s2)
    mlx_f, mlx_p = mlx_combined_ftest_5x2cv(est1, est2, x, y, random_seed=seed)
    assert (f, p) == pytest.approx((mlx_f, mlx_p), rel=1e-9)


def test_5x2cv_on_learning_rules_uses_disjoint_halves_and_detects_a_real_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(300, generator=g) > 0).long()
    seen = []

    def linear(tx, ty, ex):
        seen.append((len(tx), len(ex)))
        w = torch.linalg.lstsq(
            torch.cat([tx, torch.ones(len(tx), 1)], 1), ty.double().mul(2).sub(1)[:, None].float()
        ).solution
        return (torch.cat([ex, torch.ones(len(ex), 1)], 1) @ w).squeeze(1).gt(0).long()

    def majority(tx, ty, ex):
        return torch.full((len(ex),), int(ty.mode().values))

    def accuracy(p, t):
        return (p == t).double().mean()

    scores = five_by_two_cv_scores(linear, majority, x, y, accuracy, seed=0)
    assert scores.shape == (5, 2, 2) and set(seen) == {(150, 150)}
    t, p_t = paired_ttest_5x2cv(linear, majority, x, y, accuracy, seed=0)
    f, p_f = combined_ftest_5x2cv(linear, majority, x, y, accuracy, seed=0)
    assert (t, p_t) == pytest.approx(paired_ttest_5x2cv_from_scores(scores[..., 0], scores[..., 1]))
    assert t > 0 and f > 1 and p_f < 0.01


def test_holm_correction_hand_worked():
    # sorted p = 0.01, 0.02, 0.03, 0.5 with m = 4: 4*0.01 = 0.04, 3*0.02 = 0.06, 2*0.03 = 0.06, 1*0.5 = 0.5
    adjusted = holm_correction([0.03, 0.5, 0.01, 0.02])
    assert adjusted.tolist() == pytest.approx([0.06, 0.5, 0.04, 0.06])
    # monotone step-down: sorted 0.001, 0.4, 0.45 -> 3*0.001, 2*0.4 = 0.8, and 1*0.45 is raised to 0.8
    assert holm_correction([0.4, 0.45, 0.001]).tolist() == pytest.approx([0.8, 0.8, 0.003])
    # the cap at 1: 2*0.6 = 1.2 -> 1, and 0.7 is raised to 1
    assert holm_correction([0.6, 0.7, 0.001]).tolist() == pytest.approx([1.0, 1.0, 0.003])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="never disagree"):
        mcnemar(torch.tensor([[5, 0], [0, 3]]))
    with pytest.raises(ValueError, match="2x2"):
        mcnemar(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="at least two"):
        cochrans_q(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="shape \\(5, 2\\)"):
        paired_ttest_5x2cv_from_scores(torch.zeros(10), torch.zeros(10))
    with pytest.raises(ValueError, match="probabilities"):
        holm_correction([0.1, 1.5])
