"""The Metric classes over batches equal the functions over the concatenated data."""

import pytest
import torch

from lightning_mix.evaluation import (
    AURC,
    EnsembleDiversity,
    ExcessAURC,
    SelectiveAccuracy,
    aurc,
    ensemble_gain,
    excess_aurc,
    pairwise_disagreement,
    selective_accuracy,
)


def _data(seed=0, n=300, c=5):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) * 2 + torch.nn.functional.one_hot(target, c)
    return logits, target


@pytest.mark.parametrize("input", ["logits", "probs"])
def test_stored_confidence_metrics_equal_the_functions(input):
    logits, target = _data()
    preds = logits if input == "logits" else logits.softmax(-1)
    metrics = [AURC(input=input), ExcessAURC(input=input), SelectiveAccuracy(coverage=0.7, input=input)]
    for start in range(0, 300, 64):
        for m in metrics:
            m.update(preds[start : start + 64], target[start : start + 64])
    probs = logits.softmax(-1)
    conf, loss = probs.max(-1).values, (probs.argmax(-1) != target).double()
    assert float(metrics[0].compute()) == pytest.approx(float(aurc(conf, loss)), abs=1e-6)
    assert float(metrics[1].compute()) == pytest.approx(float(excess_aurc(conf, loss)), abs=1e-6)
    assert float(metrics[2].compute()) == pytest.approx(float(selective_accuracy(conf, 1 - loss, 0.7)), abs=1e-6)


def test_ensemble_diversity_streams_to_the_functions():
    g = torch.Generator().manual_seed(1)
    members = torch.randn(3, 200, 4, generator=g).softmax(-1)
    target = torch.randint(0, 4, (200,), generator=g)
    for loss in ("nll", "brier"):
        metric = EnsembleDiversity(num_members=3, loss=loss)
        for start in range(0, 200, 50):
            metric.update(members[:, start : start + 50], target[start : start + 50])
        out = metric.compute()
        ref = ensemble_gain(members, target, loss=loss)
        assert float(out["disagreement"]) == pytest.approx(float(pairwise_disagreement(members)))
        assert float(out["member_loss"]) == pytest.approx(ref.member_loss)
        assert float(out["ensemble_loss"]) == pytest.approx(ref.ensemble_loss)
        assert float(out["gain"]) == pytest.approx(ref.gain)
        assert float(out["ambiguity"]) == pytest.approx(ref.ambiguity)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="coverage"):
        SelectiveAccuracy(coverage=1.5)
    with pytest.raises(ValueError, match="input must be"):
        AURC(input="scores")
    with pytest.raises(RuntimeError, match="before any update"):
        AURC().compute()
    with pytest.raises(ValueError, match=r"\(2, N, C\)"):
        EnsembleDiversity(num_members=2).update(torch.rand(3, 4, 2), torch.zeros(4, dtype=torch.long))
