"""Ensemble weights learned by NLL against scipy.optimize on the same objective."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from lightning_mix.evaluation.ensembling import combine_log_probs, fit_ensemble_weights


def _members(seed=0, n=400, c=4):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n,), generator=g)
    one_hot = torch.nn.functional.one_hot(target, c)
    strengths = (3.0, 1.0, 0.0)  # a good member, a weak one, and pure noise
    logits = torch.stack([torch.randn(n, c, generator=g) + s * one_hot for s in strengths])
    return logits.log_softmax(-1), target


def test_uniform_combination_is_the_mean_of_probabilities():
    log_p, _ = _members()
    assert torch.allclose(combine_log_probs(log_p).exp(), log_p.exp().mean(0), atol=1e-6)
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    expected = (w[:, None, None] * log_p.double().exp()).sum(0)
    assert torch.allclose(combine_log_probs(log_p.double(), w).exp(), expected)


def test_learned_weights_match_scipy_on_the_simplex():
    log_p, target = _members()
    weights = fit_ensemble_weights(log_p, target)
    picked = log_p.double().gather(-1, target[None, :, None].expand(3, -1, 1)).squeeze(-1).exp().numpy()  # (M, N)

    def nll(w):
        return -np.log(w @ picked).mean()

    ref = minimize(
        nll,
        np.full(3, 1 / 3),
        method="SLSQP",
        bounds=[(0, 1)] * 3,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        options={"ftol": 1e-12},
    )
    assert float(weights.sum()) == pytest.approx(1.0)
    assert nll(weights.numpy()) == pytest.approx(ref.fun, abs=1e-6)
    assert weights[0] > weights[1] > weights[2]
    assert nll(weights.numpy()) <= nll(np.full(3, 1 / 3))


def test_bad_input_is_named():
    log_p, target = _members()
    with pytest.raises(ValueError, match="shape \\(M, N, C\\)"):
        combine_log_probs(log_p[0])
    with pytest.raises(ValueError, match="non-negative"):
        combine_log_probs(log_p, torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="labels"):
        fit_ensemble_weights(log_p, target[:10])
