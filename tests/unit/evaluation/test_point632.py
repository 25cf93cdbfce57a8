"""The .632 / .632+ bootstrap against mlxtend (per-split form) and Efron and Tibshirani's pooled formulas."""

import numpy as np
import pytest
import torch
from mlxtend.evaluate import bootstrap_point632_score
from mlxtend.evaluate.bootstrap_outofbag import BootstrapOutOfBag
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from lightning_mix.evaluation import bootstrap_point632_error, zero_one_loss


@pytest.fixture(scope="module")
def data():
    # separable enough that no split needs the .632+ caps (mlxtend applies none), noisy enough to overfit a little
    x, y = make_classification(n_samples=80, n_features=6, n_informative=3, flip_y=0.1, class_sep=2.0, random_state=0)
    return x, y


def _sklearn_rule(estimator):
    def fit_predict(train_x, train_y, eval_x):
        model = clone(estimator).fit(train_x.numpy(), train_y.numpy())
        return torch.from_numpy(model.predict(eval_x.numpy()))

    return fit_predict


def _mlxtend_splits(n, n_splits, seed):
    x = np.zeros((n, 1))
    return torch.from_numpy(np.stack([train for train, _ in BootstrapOutOfBag(n_splits, seed).split(x)]))


@pytest.mark.parametrize("method", [".632", ".632+", "oob"])
def test_per_split_form_matches_mlxtend(data, method):
    """Equal to mlxtend on every split where Efron and Tibshirani's caps (0 <= R <= 1, Err1 <= gamma)
    do not act; where they act (mlxtend applies none), equal to the capped formula."""
    x, y = data
    estimator = LogisticRegression(C=100.0, max_iter=1000)
    splits = _mlxtend_splits(len(y), 25, 4)
    expected = bootstrap_point632_score(estimator, x, y, n_splits=25, method=method, random_seed=4)
    ours = bootstrap_point632_error(
        _sklearn_rule(estimator),
        torch.from_numpy(x),
        torch.from_numpy(y),
        method=method,
        aggregate="per_split",
        split_indices=splits,
    )
    ours_scores = 1.0 - ours.per_split.numpy()
    uncapped = 0
    for b, rows in enumerate(splits.numpy()):
        pred = clone(estimator).fit(x[rows], y[rows]).predict(x)
        out = ~np.isin(np.arange(len(y)), rows)
        err, err1 = np.mean(pred != y), np.mean(pred[out] != y[out])
        gamma = np.mean(y == 1) * np.mean(pred != 1) + np.mean(y != 1) * np.mean(pred == 1)
        r = (err1 - err) / (gamma - err)
        if method != ".632+" or (0 <= r <= 1 and err1 <= gamma):
            assert ours_scores[b] == pytest.approx(expected[b], rel=1e-10)
            uncapped += 1
        else:
            r_capped = (min(err1, gamma) - err) / (gamma - err) if min(err1, gamma) > err else 0.0
            w = 0.632 / (1 - 0.368 * r_capped)
            assert ours_scores[b] == pytest.approx(1 - ((1 - w) * err + w * min(err1, gamma)), rel=1e-10)
    assert uncapped >= 12


def test_pooled_form_follows_efron_tibshirani(data):
    """Err^(1) is the mean over samples of each sample's mean out-of-bag loss (eq. 7 of the 1997 paper);
    err-bar and gamma come from the fit on all data; .632+ uses R and w of eqs. 28-32."""
    x, y = data
    estimator = LogisticRegression(C=100.0, max_iter=1000)
    rule = _sklearn_rule(estimator)
    splits = _mlxtend_splits(len(y), 30, 0)
    ours = bootstrap_point632_error(
        rule, torch.from_numpy(x), torch.from_numpy(y), method=".632+", split_indices=splits
    )

    n = len(y)
    loss_sum, count = np.zeros(n), np.zeros(n)
    for rows in splits.numpy():
        pred = clone(estimator).fit(x[rows], y[rows]).predict(x)
        out = ~np.isin(np.arange(n), rows)
        loss_sum[out] += pred[out] != y[out]
        count[out] += out[out]
    err1 = np.mean(loss_sum[count > 0] / count[count > 0])
    full = clone(estimator).fit(x, y).predict(x)
    err = np.mean(full != y)
    p1, q1 = np.mean(y == 1), np.mean(full == 1)
    gamma = p1 * (1 - q1) + (1 - p1) * q1
    r = (min(err1, gamma) - err) / (gamma - err)
    w = 0.632 / (1 - 0.368 * r)
    assert ours.out_of_bag == pytest.approx(err1)
    assert ours.resubstitution == pytest.approx(err)
    assert ours.no_information == pytest.approx(gamma)
    assert ours.error == pytest.approx((1 - w) * err + w * min(err1, gamma))
    dot632 = bootstrap_point632_error(
        rule, torch.from_numpy(x), torch.from_numpy(y), method=".632", split_indices=splits
    )
    assert dot632.error == pytest.approx(0.368 * err + 0.632 * err1)


def test_632_plus_weight_is_632_without_overfitting_and_approaches_one_with_full_overfitting():
    # A rule that memorises (1-nearest neighbour) on pure-noise labels: err-bar = 0, Err1 ~ gamma, so R ~ 1, w ~ 1.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 3, generator=g), torch.randint(0, 2, (60,), generator=g)

    def nearest_neighbour(tx, ty, ex):
        return ty[torch.cdist(ex, tx).argmin(1)]

    res = bootstrap_point632_error(nearest_neighbour, x, y, n_splits=50, method=".632+", seed=0)
    assert res.resubstitution == 0.0
    assert res.relative_overfitting > 0.8 and res.weight > 0.9
    assert res.error > bootstrap_point632_error(nearest_neighbour, x, y, n_splits=50, method=".632", seed=0).error


def test_no_information_error_of_zero_one_loss_is_the_class_frequency_formula():
    from lightning_mix.evaluation.point632 import _no_information_error

    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 2, 0])
    p = torch.bincount(targets, minlength=3).double() / 6
    q = torch.bincount(preds, minlength=3).double() / 6
    assert _no_information_error(preds, targets, zero_one_loss) == pytest.approx(float((p * (1 - q)).sum()))


def test_bad_arguments_are_named():
    x, y = torch.randn(10, 2), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="method must be one of"):
        bootstrap_point632_error(lambda a, b, c: b[:1].expand(len(c)), x, y, method="632")
    with pytest.raises(ValueError, match="split_indices must have shape"):
        bootstrap_point632_error(lambda a, b, c: b[:1].expand(len(c)), x, y, split_indices=torch.zeros(3, 9).long())
