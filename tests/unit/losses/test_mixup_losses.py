"""Decoupled mixup, MRL and M-NDCG against hand-worked numbers, masking, gradients and reductions."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_mix.losses import decoupled_mixup_loss, mixup_ndcg_loss, mixup_ranking_loss, soft_cross_entropy


def _log(x):
    return math.log(x)


E = math.e


def test_decoupled_mixup_hand_worked():
    # sample 0: class 0 mixed with class 1 (lam 0.7), logits [1, 0, 0]
    # sample 1: class 1 mixed with class 0 (lam 0.7), logits [0, 2, 0]
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    index = torch.tensor([1, 0])
    lam = torch.tensor([0.7, 0.7])
    ce0 = _log(E + 2) - 0.7 * 1.0
    d0 = (_log(E + 1) - 1.0) + _log(2.0)  # class 0 without class 1; class 1 without class 0
    ce1 = _log(2 + E**2) - 0.7 * 2.0
    d1 = (_log(E**2 + 1) - 2.0) + _log(2.0)
    per = decoupled_mixup_loss(logits, labels, index, lam, eta=0.1, reduction="none")
    torch.testing.assert_close(per, torch.tensor([ce0 + 0.1 * d0, ce1 + 0.1 * d1]), rtol=1e-6, atol=1e-6)
    loss = decoupled_mixup_loss(logits, labels, index, lam, eta=0.1)
    torch.testing.assert_close(loss, per.mean())
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_decoupled_mixup_eta_zero_is_mixup_ce_and_same_class_has_no_decoupled_term():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    index = torch.tensor([1, 0, 3, 2, 5, 4])
    lam = torch.rand(6)
    onehot = F.one_hot(labels, 5).float()
    mixed = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[index]
    ref = soft_cross_entropy(logits, mixed, reduction="none")
    torch.testing.assert_close(decoupled_mixup_loss(logits, labels, index, lam, eta=0.0, reduction="none"), ref)
    with_eta = decoupled_mixup_loss(logits, labels, index, lam, eta=1.0, reduction="none")
    # samples 0 and 1 are a same-class pair: no decoupled term; the others strictly gain one
    torch.testing.assert_close(with_eta[:2], ref[:2])
    assert (with_eta[2:] > ref[2:]).all()
    # dense (smoothed) labels give the same class ids and the smoothed mixup CE
    smooth = onehot * 0.9 + 0.1 / 5
    smooth_mixed = lam[:, None] * smooth + (1 - lam[:, None]) * smooth[index]
    out = decoupled_mixup_loss(logits, smooth, index, lam, eta=0.0, reduction="none")
    torch.testing.assert_close(out, soft_cross_entropy(logits, smooth_mixed, reduction="none"))
    torch.testing.assert_close(
        decoupled_mixup_loss(logits, labels, index, lam, eta=0.0, label_smoothing=0.1, reduction="none"), out
    )


def test_decoupled_term_matches_explicit_masked_softmax():
    torch.manual_seed(1)
    logits = torch.randn(8, 4) * 3
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    index = torch.tensor([1, 2, 3, 0, 5, 6, 7, 4])
    lam = torch.full((8,), 0.5)
    a, b = labels, labels[index]
    minus_b = logits.scatter(1, b[:, None], float("-inf"))
    minus_a = logits.scatter(1, a[:, None], float("-inf"))
    ref_d = F.cross_entropy(minus_b, a, reduction="none") + F.cross_entropy(minus_a, b, reduction="none")
    d = decoupled_mixup_loss(logits, labels, index, lam, eta=1.0, reduction="none") - decoupled_mixup_loss(
        logits, labels, index, lam, eta=0.0, reduction="none"
    )
    torch.testing.assert_close(d, ref_d, rtol=1e-5, atol=1e-5)


def test_mrl_hand_worked_and_masking():
    clean = torch.tensor([[3.0, 1.0], [0.0, 2.0]], requires_grad=True)
    mixed = torch.tensor([[2.0, 0.0], [1.0, 1.5]], requires_grad=True)
    # relu(2 - 3 + 2) = 1, relu(1.5 - 2 + 2) = 1.5
    loss = mixup_ranking_loss(clean, mixed, margin=2.0)
    torch.testing.assert_close(loss, torch.tensor(1.25))
    loss.backward()
    torch.testing.assert_close(clean.grad, torch.tensor([[-0.5, 0.0], [0.0, -0.5]]))
    torch.testing.assert_close(mixed.grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    index = torch.tensor([1, 0])
    assert mixup_ranking_loss(clean, mixed, index, torch.tensor([0, 1]), margin=2.0).item() == pytest.approx(1.25)
    # same-class pair masked, still divided by B (authors' convention)
    assert mixup_ranking_loss(clean, mixed, index, torch.tensor([1, 1]), margin=2.0).item() == 0.0
    per = mixup_ranking_loss(clean, mixed, torch.tensor([0, 0]), torch.tensor([0, 1]), margin=1.0, reduction="none")
    # sample 0 paired with itself (same class): masked; sample 1: relu(1.5 - 2 + 1)
    torch.testing.assert_close(per, torch.tensor([0.0, 0.5]))
    # the hinge is inactive when the mixed max logit is already margin below
    assert mixup_ranking_loss(clean, mixed - 10, margin=2.0).item() == 0.0


def test_mrl_k_copies_average():
    torch.manual_seed(2)
    clean, m1, m2 = torch.randn(3, 5, 4).unbind(0)
    both = mixup_ranking_loss(clean, torch.stack([m1, m2]), margin=1.0)
    ref = (mixup_ranking_loss(clean, m1, margin=1.0) + mixup_ranking_loss(clean, m2, margin=1.0)) / 2
    torch.testing.assert_close(both, ref)


def test_ndcg_hand_worked():
    # clean conf 0.75; copy 1 (lam 0.6, rel 0.6) conf 0.5; copy 2 (lam 0.1, rel 0.9) conf 0.8
    clean = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    mixed = torch.tensor([[[0.0, 0.0]], [[math.log(4.0), 0.0]]], requires_grad=True)
    lam = torch.tensor([[0.6], [0.1]])
    dcg = 0.75 + 0.8 / math.log2(3) + 0.5 / 2
    idcg = 1.0 + 0.9 / math.log2(3) + 0.6 / 2
    loss = mixup_ndcg_loss(clean, mixed, lam)
    assert loss.item() == pytest.approx(1 - dcg / idcg, abs=1e-6)
    loss.backward()
    assert clean.grad.abs().sum() > 0 and mixed.grad.abs().sum() > 0
    # one lam per copy, given as (K,), is the same thing for B = 1
    assert mixup_ndcg_loss(clean, mixed, torch.tensor([0.6, 0.1])).item() == pytest.approx(1 - dcg / idcg, abs=1e-6)


def test_ndcg_overconfident_uses_inverse_ratio_and_same_class_relevance():
    p = 0.99
    logit = math.log(p / (1 - p))
    clean = torch.tensor([[logit, 0.0]])
    mixed = torch.tensor([[[logit, 0.0]]])
    lam = torch.tensor([[0.5]])
    dcg = p + p / math.log2(3)
    idcg = 1.0 + 0.5 / math.log2(3)
    assert dcg > idcg
    assert mixup_ndcg_loss(clean, mixed, lam).item() == pytest.approx(1 - idcg / dcg, abs=1e-6)
    # mixed with its own class: relevance 1, so dcg < idcg again
    same = mixup_ndcg_loss(clean, mixed, lam, index=torch.tensor([[0]]), labels=torch.tensor([1]))
    assert same.item() == pytest.approx(1 - dcg / (1 + 1 / math.log2(3)), abs=1e-6)
    # perfect confidences (equal to the relevances) give zero loss
    perfect = mixup_ndcg_loss(torch.tensor([[30.0, 0.0]]), torch.tensor([[[0.0, 0.0]]]), lam)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)


def test_losses_run_in_float32_for_bf16_and_reject_bad_shapes():
    torch.manual_seed(3)
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    index = torch.tensor([1, 2, 3, 0])
    lam = torch.rand(4)
    ref = decoupled_mixup_loss(logits, labels, index, lam)
    out = decoupled_mixup_loss(logits.bfloat16(), labels, index, lam)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="reduction"):
        mixup_ranking_loss(logits, logits, reduction="avg")
    with pytest.raises(ValueError, match="mixed_logits"):
        mixup_ndcg_loss(logits, torch.randn(2, 5, 3), torch.rand(2, 5))
    with pytest.raises(ValueError, match="index"):
        mixup_ranking_loss(logits, logits, labels=labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_decoupled_mixup_from_mixed_targets_matches_pair_form(smoothing):
    torch.manual_seed(4)
    logits = torch.randn(16, 6, requires_grad=True)
    labels = torch.randint(0, 6, (16,))
    index = torch.randperm(16)
    lam = torch.rand(16)
    lam[:3] = torch.tensor([0.5, 1.0, 0.0])  # a tie, and the two ends (no second class)
    pair_form = decoupled_mixup_loss(logits, labels, index, lam, eta=0.3, label_smoothing=smoothing, reduction="none")
    smooth = F.one_hot(labels, 6).float() * (1 - smoothing) + smoothing / 6
    mixed = lam[:, None] * smooth + (1 - lam[:, None]) * smooth[index]
    target_form = decoupled_mixup_loss(logits, mixed, eta=0.3, reduction="none")
    # lam = 1 or 0 leaves one class: no decoupled term there, whereas the pair form still sees a != b
    ends = (lam == 1) | (lam == 0)
    expected = torch.where(
        ends,
        decoupled_mixup_loss(logits, labels, index, lam, eta=0.0, label_smoothing=smoothing, reduction="none"),
        pair_form,
    )
    torch.testing.assert_close(target_form, expected, rtol=1e-5, atol=1e-5)
    target_form.sum().backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="both index and lam"):
        decoupled_mixup_loss(logits, labels, index)
    with pytest.raises(ValueError, match="mixed dense targets"):
        decoupled_mixup_loss(logits, labels)
