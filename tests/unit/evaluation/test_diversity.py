"""Ensemble disagreement and gain against hand-worked values and the ambiguity decomposition."""

import pytest
import torch

from lightning_mix.evaluation import ensemble_gain, pairwise_disagreement


def test_disagreement_hand_worked():
    eye = torch.eye(3)
    # labels: member 0 -> [0, 1, 2, 0], member 1 -> [0, 1, 1, 1], member 2 -> [0, 2, 2, 0]
    members = torch.stack([eye[[0, 1, 2, 0]], eye[[0, 1, 1, 1]], eye[[0, 2, 2, 0]]])
    # pairs (0,1): 2/4, (0,2): 1/4, (1,2): 3/4
    assert float(pairwise_disagreement(members)) == pytest.approx((0.5 + 0.25 + 0.75) / 3)


def test_brier_gain_equals_ambiguity_and_nll_gain_is_the_jensen_gap():
    g = torch.Generator().manual_seed(0)
    members = torch.randn(5, 100, 4, generator=g).softmax(-1)
    target = torch.randint(0, 4, (100,), generator=g)
    brier = ensemble_gain(members, target, loss="brier")
    assert brier.gain == pytest.approx(brier.ambiguity, rel=1e-9)
    nll = ensemble_gain(members, target, loss="nll")
    member_nll = -members.double().log().gather(-1, target.expand(5, 100)[..., None]).mean()
    ensemble_nll = -members.double().mean(0).log().gather(-1, target[:, None]).mean()
    assert nll.member_loss == pytest.approx(float(member_nll))
    assert nll.ensemble_loss == pytest.approx(float(ensemble_nll))
    assert nll.gain > 0


def test_identical_members_have_no_diversity():
    probs = torch.rand(10, 3).softmax(-1)
    members = probs.expand(4, 10, 3)
    target = torch.zeros(10, dtype=torch.long)
    assert float(pairwise_disagreement(members)) == 0.0
    assert ensemble_gain(members, target).gain == pytest.approx(0.0, abs=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="M >= 2"):
        pairwise_disagreement(torch.rand(1, 5, 3))
    with pytest.raises(ValueError, match="'nll' or 'brier'"):
        ensemble_gain(torch.rand(2, 5, 3), torch.zeros(5, dtype=torch.long), loss="ce")
