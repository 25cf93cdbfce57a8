"""AdAutoMixMixin's step without a Trainer: shares and lam, the Mixup limit, gradient routes, the authors' rule."""

import pytest
import torch
import torch.nn.functional as F
from references.adautomix_authors import authors_losses, authors_masks
from torch import nn

from lightning_mix.demos import AdAutoMixSmallCNN
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing.mix_block import AdaptiveMaskGenerator, mix_with_masks
from lightning_mix.mixins.automix import mixed_cross_entropy


def _model(mix_samples=3, **options):
    torch.manual_seed(0)
    model = AdAutoMixSmallCNN(width=4, cosine_schedule=False, mix_seed=0, mix_samples=mix_samples, **options)
    with torch.no_grad():  # a non-uniform generator, so its masks and gradients are not trivial
        for p in model.adautomix_generator.parameters():
            p.normal_(std=0.3)
    return model.train()


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("slots", [2, 3, 4])
def test_shares_lie_in_unit_interval_sum_to_one_and_lam_is_the_authors(slots):
    model = _model(slots)
    x, y = _batch()
    out = model.adautomix_losses(x, y, adversarial=True)
    for key in ("mask_mb", "mask_bb"):
        mask = out[key]
        assert mask.shape == (8, slots, 28, 28)
        assert float(mask.detach().min()) >= 0 and float(mask.detach().max()) <= 1
        torch.testing.assert_close(mask.sum(dim=1), torch.ones(8, 28, 28))
    assert float(out["mask_mb"].detach().std()) > 1e-3  # learned, not constant
    for key in ("indices_mb", "indices_bb"):
        indices = out[key]
        assert indices.shape == (slots, 8) and torch.equal(indices[0], torch.arange(8))
        for row in indices[1:]:
            assert torch.equal(row.sort().values, torch.arange(8))  # permutations
    for key in ("lam_mb", "lam_bb"):
        assert out[key].shape == (slots,) and bool((out[key] > 0).all())
        torch.testing.assert_close(out[key].sum(), torch.tensor(1.0))
    if slots == 2:  # two independent draws (l, 1 - l)
        assert not torch.equal(out["lam_mb"], out["lam_bb"])
    else:  # one normalised vector shared by both sets
        assert torch.equal(out["lam_mb"], out["lam_bb"])


def test_generator_matches_the_authors_per_slot_attention():
    torch.manual_seed(1)
    generator = AdaptiveMaskGenerator(8)
    with torch.no_grad():
        for p in generator.parameters():
            p.normal_(std=0.3)
    features = [torch.randn(5, 8, 4, 4) for _ in range(3)]
    expected = authors_masks(features, generator.query, generator.key, generator.value, (16, 16), "bilinear")
    got = generator(torch.stack(features), torch.full((3,), 1 / 3), (16, 16))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    two = generator(torch.stack(features[:2]), torch.tensor([0.3, 0.7]), (16, 16))
    torch.testing.assert_close(
        two, authors_masks(features[:2], generator.query, generator.key, generator.value, (16, 16), "bilinear")
    )


class _ConstantShares(nn.Module):
    """A frozen generator whose shares are the slots' lam at every pixel."""

    def forward(self, features, lam, size):
        return lam.view(1, -1, 1, 1).expand(features.shape[1], -1, *size)


@pytest.mark.parametrize("slots", [2, 3])
def test_constant_shares_give_mixups_loss_at_that_lam(slots):
    model = _model(slots, lam_margin=0.0)
    model.adautomix_generator = _ConstantShares()
    x, y = _batch()
    out = model.adautomix_losses(x, y, adversarial=False)
    lam, idx = out["lam_bb"], out["indices_bb"]
    mixed = sum(lam[i] * x[idx[i]] for i in range(slots))
    logits = model(mixed)
    expected = sum(lam[i] * F.cross_entropy(logits, y[idx[i]]) for i in range(slots))
    torch.testing.assert_close(out["mix_loss"], expected, rtol=1e-5, atol=1e-6)
    if slots == 2:  # two slots: exactly the library's Mixup loss
        torch.testing.assert_close(out["mix_loss"], mixed_cross_entropy(logits, y, idx[1], lam[0].expand(8)))
    else:  # and the plain-Mixup term equals the generated one
        torch.testing.assert_close(out["plain_loss"], out["mix_loss"])
    assert torch.equal(out["mask_bb"], lam.view(1, slots, 1, 1).expand(8, slots, 28, 28))


def test_lam_margin_replaces_the_classifiers_shares_by_lam():
    model = _model(3, lam_margin=0.49)  # lam_bb[0] <= 0.49 or >= 0.51: nearly always plain Mixup
    x, y = _batch()
    out = model.adautomix_losses(x, y, adversarial=False)
    lam = out["lam_bb"]
    assert bool(lam[0] <= 0.49) or bool(lam[0] >= 0.51)
    torch.testing.assert_close(out["mask_bb"], lam.view(1, 3, 1, 1).expand(8, 3, 28, 28))
    assert float(out["mask_mb"].detach().std()) > 1e-3  # the generator's own shares are untouched


@pytest.mark.parametrize("adversarial", [True, False])
@pytest.mark.parametrize("slots", [2, 3])
def test_gradients_reach_the_generator_only_through_its_objective(slots, adversarial):
    model = _model(slots)
    x, y = _batch()
    out = model.adautomix_losses(x, y, adversarial=adversarial)
    gen = list(model.adautomix_generator.parameters())
    net = [p for n, p in model.named_parameters() if not n.startswith("adautomix_generator.")]

    def grads(loss, params):
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    for term in ("mix_loss", "clean_loss", "classifier_loss") + (("plain_loss",) if slots > 2 else ()):
        assert all(g is None for g in grads(out[term], gen)), term  # the classifier's masks are detached
    for term in ("target_mix_loss", "cosine", "generator_loss"):
        assert all(g is None for g in grads(out[term], net)), term  # the target network takes no gradient
    beta = model.adautomix_beta
    objective = -beta * out["target_mix_loss"] + (1 - beta) * out["cosine"] if adversarial else out["target_mix_loss"]
    for a, b in zip(grads(out["loss"], gen), grads(objective, gen)):
        torch.testing.assert_close(a, b)
    assert sum(float(g.abs().sum()) for g in grads(objective, gen)) > 0
    for a, b in zip(grads(out["loss"], net), grads(out["classifier_loss"], net)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("iteration", [0, 1])
@pytest.mark.parametrize("slots", [2, 3])
def test_losses_equal_the_authors_rule(slots, iteration):
    model = _model(slots)
    x, y = _batch()
    out = model.adautomix_losses(x, y, adversarial=iteration % 2 == 0)
    state = model.automix_momentum_state()

    def q(inputs):
        return model(inputs)

    def k(inputs):
        return model._automix_call(state, inputs)

    if slots == 2:
        index_mb, index_bb = out["indices_mb"][1], out["indices_bb"][1]
        lam = [out["lam_mb"][0], out["lam_bb"][0]]
    else:
        index_mb, index_bb, lam = list(out["indices_mb"]), list(out["indices_bb"]), list(out["lam_mb"])
    classifier, generator = authors_losses(
        q, k, x, y, index_mb, index_bb, lam, out["mask_mb"], out["mask_bb"], iteration, 0.5, 0.3
    )
    torch.testing.assert_close(out["classifier_loss"], classifier, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["generator_loss"], generator, rtol=1e-5, atol=1e-6)


def test_dense_targets_give_the_same_losses_as_class_indices():
    x, y = _batch()
    a = _model(3).adautomix_losses(x, y, adversarial=True)
    b = _model(3).adautomix_losses(x, F.one_hot(y, 10).float(), adversarial=True)
    for key in ("classifier_loss", "generator_loss"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert torch.isclose(a["clean_loss"], soft_cross_entropy(a["logits"], y))


def test_mix_with_masks_is_the_weighted_sum_of_the_slots_images():
    x = torch.randn(4, 3, 5, 5)
    indices = torch.stack([torch.arange(4), torch.tensor([1, 2, 3, 0]), torch.tensor([3, 0, 1, 2])])
    shares = torch.rand(4, 3, 5, 5).softmax(dim=1)
    expected = sum(x[indices[i]] * shares[:, i : i + 1] for i in range(3))
    torch.testing.assert_close(mix_with_masks(x, indices, shares), expected)


def test_bad_options_are_refused_at_init():
    for options, match in (
        ({"mix_samples": 1}, "mix_samples"),
        ({"alpha": 0.0}, "alpha"),
        ({"beta": 1.5}, "beta"),
        ({"mixup_ratio": -0.1}, "mixup_ratio"),
        ({"lam_margin": 0.5}, "lam_margin"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
        ({"momentum": 0.9999, "end_momentum": 0.999}, "momentum"),
        ({"generator_lr": 0.0}, "generator_lr"),
    ):
        with pytest.raises(ValueError, match=match):
            AdAutoMixSmallCNN(width=4, **options)


def test_one_backward_fills_each_networks_grad_from_its_own_objective_only():
    model = _model(3)
    x, y = _batch()
    out = model.adautomix_losses(x, y, adversarial=True)
    gen = dict(model.adautomix_generator.named_parameters())
    net = {n: p for n, p in model.named_parameters() if not n.startswith("adautomix_generator.")}
    expected_net = torch.autograd.grad(out["classifier_loss"], list(net.values()), retain_graph=True)
    expected_gen = torch.autograd.grad(out["generator_loss"], list(gen.values()), retain_graph=True)
    out["loss"].backward()
    for (name, p), g in zip(net.items(), expected_net):
        torch.testing.assert_close(p.grad, g, msg=name)
    for (name, p), g in zip(gen.items(), expected_gen):
        torch.testing.assert_close(p.grad, g, msg=name)
        assert float(p.grad.abs().sum()) > 0, name
    for name, t in model.automix_momentum_state().items():  # the target network is no parameter: no gradient
        assert t.grad is None and not t.requires_grad, name


def test_lam_embedding_concat_makes_the_shares_depend_on_lam():
    torch.manual_seed(2)
    generator = AdaptiveMaskGenerator(8, lam_embedding="concat")
    with torch.no_grad():
        for p in generator.parameters():
            p.normal_(std=0.3)
    features = torch.randn(3, 5, 8, 4, 4)
    a = generator(features, torch.tensor([0.6, 0.3, 0.1]), (8, 8))
    b = generator(features, torch.tensor([0.1, 0.3, 0.6]), (8, 8))
    torch.testing.assert_close(a.sum(dim=1), torch.ones(5, 8, 8))
    assert not torch.allclose(a, b)
    plain = AdaptiveMaskGenerator(8)
    torch.testing.assert_close(
        plain(features, torch.tensor([0.6, 0.3, 0.1]), (8, 8)), plain(features, torch.tensor([0.1, 0.3, 0.6]), (8, 8))
    )
