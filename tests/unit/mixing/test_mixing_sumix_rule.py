"""SUMix's rule (mixing.sumix): hand-worked ratios and regulariser, limits, the authors' code, the targets contract."""

from __future__ import annotations

import math

import pytest
import torch
from references.sumix_authors import authors_in_loss

from lightning_mix.mixing import (
    MixedBatch,
    corrected_lam,
    dense_targets,
    semantic_distances,
    sumix_batch,
    uncertainty_loss,
    uncertainty_scores,
)


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _distance(mixed_probs, reference, column, batch):
    """``batch * normalize(softmax(q - r))[column]`` in plain Python."""
    soft = _softmax([q - r for q, r in zip(mixed_probs, reference)])
    return batch * soft[column] / math.sqrt(sum(s * s for s in soft))


def test_corrected_lam_matches_a_hand_computation():
    p = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]  # clean predictions
    q = [[0.5, 0.4, 0.1], [0.1, 0.2, 0.7]]  # mixed predictions
    labels, index, lam = [0, 1], [1, 0], 0.7
    want = []
    for i in range(2):
        j = index[i]
        own_ref = [0.0 if c == labels[j] else p[i][c] for c in range(3)]
        partner_ref = [0.0 if c == labels[i] else p[j][c] for c in range(3)]
        d = _distance(q[i], own_ref, labels[i], 2)
        e = _distance(q[i], partner_ref, labels[j], 2)
        a, b = lam * math.exp(-d), (1 - lam) * math.exp(-e)
        want.append(a / (a + b))
    labels_t, index_t = torch.tensor(labels), torch.tensor(index)
    own, partner = semantic_distances(torch.tensor(p).log(), torch.tensor(q).log(), labels_t, index_t)
    got = corrected_lam(torch.full((2,), lam), own, partner, labels_t, index_t)
    torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=1e-6)
    assert got[0] != pytest.approx(lam)  # the example does move the ratio


@pytest.mark.parametrize("batch", [2, 8, 64])
def test_uniform_predictions_keep_the_mixers_ratio(batch):
    """The documented limit: identical (here uniform, an untrained model's) predictions give lam_hat = lam."""
    g = torch.Generator().manual_seed(batch)
    labels = torch.randint(0, 5, (batch,), generator=g)
    index = torch.randperm(batch, generator=g)
    lam = torch.rand(batch, generator=g)
    logits = torch.zeros(batch, 5)
    own, partner = semantic_distances(logits, logits, labels, index)
    torch.testing.assert_close(corrected_lam(lam, own, partner, labels, index), lam, rtol=0, atol=1e-6)


def test_identical_non_uniform_predictions_follow_the_closed_form():
    """All rows the same distribution p: d = B / sqrt(C - 1 + exp(2 p[y_partner])), e likewise with p[y_own]."""
    p = torch.tensor([0.5, 0.2, 0.2, 0.1])
    labels, index = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    lam = torch.tensor([0.3, 0.6, 0.6, 0.3])
    logits = p.log().expand(4, 4)
    own, partner = semantic_distances(logits, logits, labels, index)
    got = corrected_lam(lam, own, partner, labels, index)
    b, c = 4, 4
    for i in range(4):
        yi, yj = int(labels[i]), int(labels[index[i]])
        d = b / math.sqrt(c - 1 + math.exp(2 * float(p[yj])))
        e = b / math.sqrt(c - 1 + math.exp(2 * float(p[yi])))
        a, bb = float(lam[i]) * math.exp(-d), (1 - float(lam[i])) * math.exp(-e)
        assert float(got[i]) == pytest.approx(a / (a + bb), abs=1e-6)
    assert float(got[1]) == pytest.approx(0.6, abs=1e-6)  # p[y_i] = p[y_j] = 0.2: the ratio is kept
    assert float(got[0]) < 0.3  # p[y_i] = 0.5 > p[y_j] = 0.1: the rule lowers the own share


def _one_hot_log_probs(labels, weights, num_classes):
    """Log-probabilities of ``sum_k weights[k] * one_hot(labels[k])`` rows (-inf where the mass is 0)."""
    probs = sum(w * torch.nn.functional.one_hot(y, num_classes).double() for y, w in zip(labels, weights))
    return probs.log().float()


@pytest.mark.parametrize(("batch", "classes"), [(128, 10), (100, 100)])
@pytest.mark.parametrize("lam", [0.8, 0.6])
def test_confident_predictions_hand_the_label_to_the_partner(batch, classes, lam):
    """The documented limit for a confident model (clean predictions one-hot at each sample's class).

    A mixed prediction one-hot at the own class y_i gives d = B / sqrt(C) and
    e = B e^-1 / sqrt(e^2 + e^-2 + C - 2); a mixed prediction that splits as the pixels do
    (lam at y_i, 1 - lam at y_j) gives d = B e^(lam - 1) / sqrt(e^(2 lam - 2) + e^(2 - 2 lam) + C - 2)
    and e = B e^-lam / sqrt(e^(2 lam) + e^(-2 lam) + C - 2). In both cases d > e for lam > 1/2, so
    lam_hat falls below 1/2: the rule moves the label away from the class the mixed image shows most.
    """
    labels = torch.arange(batch) % classes
    index = torch.roll(torch.arange(batch), 1)  # the partner's class always differs
    clean = _one_hot_log_probs([labels], [1.0], classes)
    lams = torch.full((batch,), lam)
    logit = math.log(lam / (1 - lam))

    own, partner = semantic_distances(clean, clean, labels, index)  # mixed predicted as the own class
    d = batch / math.sqrt(classes)
    e = batch * math.exp(-1) / math.sqrt(math.exp(2) + math.exp(-2) + classes - 2)
    assert float(own[0, labels[0]]) == pytest.approx(d, rel=1e-5)
    assert float(partner[0, labels[index[0]]]) == pytest.approx(e, rel=1e-5)
    got = corrected_lam(lams, own, partner, labels, index)
    want = 1 / (1 + math.exp(-(logit + e - d)))
    torch.testing.assert_close(got, torch.full((batch,), want, dtype=torch.float32), rtol=1e-4, atol=1e-7)
    assert float(got.max()) < 0.01

    split = _one_hot_log_probs([labels, labels[index]], [lam, 1 - lam], classes)
    own, partner = semantic_distances(clean, split, labels, index)
    d = batch * math.exp(lam - 1) / math.sqrt(math.exp(2 * lam - 2) + math.exp(2 - 2 * lam) + classes - 2)
    e = batch * math.exp(-lam) / math.sqrt(math.exp(2 * lam) + math.exp(-2 * lam) + classes - 2)
    got = corrected_lam(lams, own, partner, labels, index)
    want = 1 / (1 + math.exp(-(logit + e - d)))
    torch.testing.assert_close(got, torch.full((batch,), want, dtype=torch.float32), rtol=1e-4, atol=1e-7)
    assert float(got.max()) < 0.5


def test_lam_of_zero_or_one_is_kept():
    g = torch.Generator().manual_seed(1)
    labels, index = torch.randint(0, 3, (4,), generator=g), torch.tensor([1, 0, 3, 2])
    own, partner = semantic_distances(torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), labels, index)
    got = corrected_lam(torch.tensor([0.0, 1.0, 0.0, 1.0]), own, partner, labels, index)
    assert got.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_large_batches_do_not_underflow():
    """d grows with B: the direct a / (a + b) is 0 / 0 in float32 at B = 512, C = 10; the log-odds form is not."""
    g = torch.Generator().manual_seed(0)
    b = 512
    labels, index = torch.randint(0, 10, (b,), generator=g), torch.randperm(b, generator=g)
    own, partner = semantic_distances(torch.randn(b, 10, generator=g), torch.randn(b, 10, generator=g), labels, index)
    lam = torch.full((b,), 0.4)
    direct_a = lam * torch.exp(-own.gather(1, labels.view(-1, 1)).squeeze(1))
    direct_b = (1 - lam) * torch.exp(-partner.gather(1, labels[index].view(-1, 1)).squeeze(1))
    assert torch.isnan(direct_a / (direct_a + direct_b)).any()
    got = corrected_lam(lam, own, partner, labels, index)
    assert torch.isfinite(got).all() and ((got >= 0) & (got <= 1)).all()
    wide_a = lam.double() * torch.exp(-own.double().gather(1, labels.view(-1, 1)).squeeze(1))
    wide_b = (1 - lam.double()) * torch.exp(-partner.double().gather(1, labels[index].view(-1, 1)).squeeze(1))
    torch.testing.assert_close(got.double(), wide_a / (wide_a + wide_b), rtol=0, atol=1e-5)  # float64 has the range


def test_regulariser_matches_a_hand_computation():
    own = torch.tensor([[0.4, 1.2], [0.8, 0.3]])
    partner = torch.tensor([[1.0, 0.2], [0.5, 0.9]])
    clean_g = torch.tensor([[0.3, -0.2], [1.0, 0.5]])
    mixed_g = torch.tensor([[-0.4, 0.6], [0.2, 0.1]])
    labels, index, lam = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.7, 0.7])

    def unit_softmax(row):
        s = _softmax(row)
        norm = math.sqrt(sum(v * v for v in s))
        return [v / norm for v in s]

    def ce(logits, y):
        return -math.log(_softmax(logits)[y])

    total = 0.0
    for i in range(2):
        j = int(index[i])
        u_clean_i, u_clean_j, u_mixed = (
            unit_softmax(clean_g[i].tolist()),
            unit_softmax(clean_g[j].tolist()),
            unit_softmax(mixed_g[i].tolist()),
        )
        za = [math.exp(-(u_clean_i[c] + u_mixed[c] + float(own[i, c]))) for c in range(2)]
        zb = [math.exp(-(u_clean_j[c] + u_mixed[c] + float(partner[i, c]))) for c in range(2)]
        total += 0.7 * ce(za, int(labels[i])) + 0.3 * ce(zb, int(labels[j]))
    got = uncertainty_loss(own, partner, clean_g, mixed_g, labels, index, lam)
    assert float(got) == pytest.approx(total / 2, abs=1e-6)


def test_rule_matches_the_authors_code_with_one_lam_per_batch():
    g = torch.Generator().manual_seed(3)
    b, c, lam = 6, 5, 0.62
    clean, mixed = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    clean_u, mixed_u = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    labels, index = torch.randint(0, c, (b,), generator=g), torch.randperm(b, generator=g)
    ref = authors_in_loss(clean, mixed, clean_u, mixed_u, labels, index, lam, gama=0.1)
    own, partner = semantic_distances(clean, mixed, labels, index)
    torch.testing.assert_close(own.double(), ref["alpha"], rtol=0, atol=1e-5)
    torch.testing.assert_close(partner.double(), ref["alpha_"], rtol=0, atol=1e-5)
    lam_t = torch.full((b,), lam)
    torch.testing.assert_close(
        corrected_lam(lam_t, own, partner, labels, index).double(), ref["lam_a"], atol=1e-6, rtol=0
    )
    reg = uncertainty_loss(own, partner, clean_u, mixed_u, labels, index, lam_t)
    assert float(reg) == pytest.approx(float(ref["reg"]), abs=1e-5)


def test_only_the_uncertainty_logits_take_gradients():
    g = torch.Generator().manual_seed(4)
    clean = torch.randn(4, 3, generator=g, requires_grad=True)
    mixed = torch.randn(4, 3, generator=g, requires_grad=True)
    clean_u = torch.randn(4, 3, generator=g, requires_grad=True)
    mixed_u = torch.randn(4, 3, generator=g, requires_grad=True)
    labels, index = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 3, 0, 1])
    own, partner = semantic_distances(clean, mixed, labels, index)
    assert not own.requires_grad and not partner.requires_grad
    uncertainty_loss(own, partner, clean_u, mixed_u, labels, index, torch.full((4,), 0.5)).backward()
    assert clean.grad is None and mixed.grad is None
    assert clean_u.grad.abs().sum() > 0 and mixed_u.grad.abs().sum() > 0


def test_uncertainty_scores_are_unit_norm_softmax():
    g = torch.randn(3, 4)
    u = uncertainty_scores(g)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(u / u.sum(-1, keepdim=True), g.softmax(-1))


def test_sumix_batch_follows_the_mixed_batch_contract():
    labels, index = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0])
    targets = dense_targets(labels, 3)
    mixed = MixedBatch(torch.zeros(3, 1, 2, 2), targets, index, torch.full((3,), 0.5))
    lam_hat = torch.tensor([0.2, 0.9, 0.5])
    out = sumix_batch(mixed, targets, lam_hat)
    want = lam_hat.view(-1, 1) * targets + (1 - lam_hat.view(-1, 1)) * targets[index]
    torch.testing.assert_close(out.targets, want)
    assert out.inputs is mixed.inputs and torch.equal(out.index, index) and torch.equal(out.lam, lam_hat)
    torch.testing.assert_close(out.targets.sum(-1), torch.ones(3))


def test_bad_shapes_and_float_labels_are_refused():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="integer class labels"):
        semantic_distances(logits, logits, torch.zeros(3), torch.arange(3))
    with pytest.raises(ValueError, match=r"labels \(B,\) and a partner index"):
        semantic_distances(logits, logits, torch.zeros(2, dtype=torch.long), torch.arange(3))
    with pytest.raises(ValueError, match="one shape"):
        semantic_distances(logits, torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), torch.arange(3))
