"""Risk-coverage, AURC, E-AURC and selective accuracy on hand-worked examples."""

import math

import pytest
import torch

from lightning_mix.evaluation import aurc, excess_aurc, risk_coverage_curve, selective_accuracy


def test_hand_worked_aurc():
    # ranked by confidence the losses are 0, 1, 0, 1: risks 0/1, 1/2, 1/3, 2/4
    confidence = torch.tensor([0.6, 0.9, 0.7, 0.8])
    loss = torch.tensor([1.0, 0.0, 0.0, 1.0])
    coverage, risk = risk_coverage_curve(confidence, loss)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert float(aurc(confidence, loss)) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # ideal ranking 0, 0, 1, 1: risks 0, 0, 1/3, 1/2
    assert float(excess_aurc(confidence, loss)) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4 - (1 / 3 + 0.5) / 4)


def test_selective_accuracy_hand_worked():
    confidence = torch.tensor([0.6, 0.9, 0.7, 0.8])
    correct = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert float(selective_accuracy(confidence, correct, 0.5)) == pytest.approx(0.5)  # 0.9 and 0.8
    assert float(selective_accuracy(confidence, correct, 0.75)) == pytest.approx(2 / 3)
    assert float(selective_accuracy(confidence, correct, 1.0)) == pytest.approx(0.5)


def test_excess_aurc_is_zero_for_a_perfect_ranking_and_approaches_geifmans_formula():
    g = torch.Generator().manual_seed(0)
    loss = (torch.rand(20000, generator=g) < 0.1).double()
    assert float(excess_aurc(-loss, loss)) == pytest.approx(0.0, abs=1e-12)
    r = float(loss.mean())
    ideal = float(aurc(-loss, loss))
    assert ideal == pytest.approx(r + (1 - r) * math.log(1 - r), abs=2e-3)
    random_conf = torch.rand(20000, generator=g)
    assert float(aurc(random_conf, loss)) == pytest.approx(r, abs=0.01)  # an uninformative ranking: AURC ~ error rate


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same length"):
        aurc(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match="coverage must lie"):
        selective_accuracy(torch.rand(3), torch.ones(3), 0.0)
