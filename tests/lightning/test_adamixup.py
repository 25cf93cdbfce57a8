"""AdaMixUpMixin: lam in its region, the Mixup limit, the intrusion loss, gradient routes, the authors' rule,
exact resume (with gradient accumulation), bf16-mixed, averaging callbacks, errors."""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from automix_helpers import (
    assert_soup_ingredients_hold_the_mixer,
    assert_swa_averages_the_mixer,
    make_data,
    make_loader,
)
from references.adamixup_authors import authors_adamixup_loss
from tiny_trainer import tiny_trainer

from lightning_mix.demos import AdaMixUpSmallCNN
from lightning_mix.mixins.adamixup import adamixup_intrusion_loss, adamixup_lam


def _model(**options):
    return AdaMixUpSmallCNN(width=4, cosine_schedule=False, **{"mix_seed": 0, **options})


def _trainer(**options):
    return tiny_trainer(**{"max_epochs": None, "limit_val_batches": 0, **options})


def _spread_policy(model, scale=3.0):
    """Give the generator head large weights, so regions differ between pairs and from [1/3, 2/3]."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.adamixup_policy_head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_lam_lies_in_the_generated_region_and_in_the_unit_interval():
    model = _model()
    _spread_policy(model)
    x, y = make_data(10)[:]
    seen_widths = []
    for _ in range(5):
        out = model.adamixup_losses(x, y)
        region, lam = out["region"], out["lam"]
        assert lam.shape == (5,) and region.shape == (5, 3)
        torch.testing.assert_close(region.sum(-1), torch.ones(5))
        alpha, delta = region[:, 0], region[:, 1]
        assert bool((alpha <= lam).all() and (lam <= alpha + delta + 1e-7).all())
        assert bool(((lam >= 0) & (lam <= 1)).all())
        torch.testing.assert_close(lam, alpha + out["uniform"] * delta, rtol=0, atol=0)
        mixed = lam.view(-1, 1, 1, 1) * x[:5] + (1 - lam.view(-1, 1, 1, 1)) * x[out["index"]]
        torch.testing.assert_close(out["mixed"], mixed)
        seen_widths.append(delta.detach())
    assert float(torch.cat(seen_widths).std()) > 0.01  # the regions depend on the pair


def test_fresh_heads_start_near_the_region_one_third_to_two_thirds():
    out = _model().adamixup_losses(*make_data(8)[:])
    torch.testing.assert_close(out["region"], torch.full((4, 3), 1 / 3), rtol=0, atol=1e-3)
    torch.testing.assert_close(out["intrusion_loss"], torch.tensor(math.log(2)), rtol=0, atol=1e-3)


def test_a_point_region_gives_mixups_loss_at_that_lam_plus_the_clean_loss():
    model = _model().eval()  # per-sample forwards: the hand computation needs no batch statistics
    lam0 = 0.3
    model.adamixup_region = lambda gate: torch.tensor([lam0, 0.0, 1 - lam0]).expand(gate.shape[0], 3)
    x, y = make_data(8)[:]
    out = model.adamixup_losses(x, y)
    torch.testing.assert_close(out["lam"], torch.full((4,), lam0))
    index = out["index"]
    logits = model(lam0 * x[:4] + (1 - lam0) * x[index])
    mixup = lam0 * F.cross_entropy(logits, y[:4]) + (1 - lam0) * F.cross_entropy(logits, y[index])
    clean = F.cross_entropy(model(x[:4]), y[:4])
    torch.testing.assert_close(out["classification_loss"], (mixup + clean) / 2)


def test_intrusion_loss_is_the_binary_cross_entropy_of_mixed_against_original():
    logits = torch.tensor([[0.2, -0.3], [1.0, 0.5], [-0.4, 0.9]])
    intruding = torch.tensor([0.0, 0.0, 1.0])
    # by hand: p(intruding) = sigmoid(z1 - z0); originals pay -log(1 - p), mixed -log p
    d = [-0.5, -0.5, 1.3]
    hand = (math.log(1 + math.exp(d[0])) + math.log(1 + math.exp(d[1])) + math.log(1 + math.exp(-d[2]))) / 3
    assert abs(float(adamixup_intrusion_loss(logits, intruding)) - hand) < 1e-6


def test_the_step_labels_the_unseen_and_the_originals_zero_and_the_mixed_one():
    model = _model().eval()
    x, y = make_data(7)[:]  # odd batch: 3 pairs, 4 unseen
    out = model.adamixup_losses(x, y)
    binary = torch.cat([x[3:], x[:3], out["mixed"]])
    logits = model.adamixup_discriminator(model.forward_features(binary))
    torch.testing.assert_close(out["intrusion_logits"], logits)
    expected = F.cross_entropy(logits, torch.tensor([0] * 7 + [1] * 3))
    torch.testing.assert_close(out["intrusion_loss"], expected)


def _grads(model, loss, names):
    params = [p for n, p in model.named_parameters() if n.startswith(names)]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_gradients_follow_the_authors_routes():
    model = _model()
    _spread_policy(model, scale=0.5)
    out = model.adamixup_losses(*make_data(8)[:])
    policy = ("adamixup_policy_trunk", "adamixup_policy_head")
    cls, intr = out["classification_loss"], out["intrusion_loss"]
    assert _grads(model, cls, policy) > 0 and _grads(model, intr, policy) > 0  # generator: both losses
    assert _grads(model, cls, ("adamixup_discriminator",)) == 0  # discriminator: intrusion loss only
    assert _grads(model, intr, ("adamixup_discriminator",)) > 0
    assert _grads(model, intr, ("head.",)) == 0 and _grads(model, cls, ("head.",)) > 0  # your head: class loss
    assert _grads(model, cls, ("block1.",)) > 0 and _grads(model, intr, ("block1.",)) > 0  # your trunk: both


def test_policy_learns_from_the_mixed_label_too():
    """The classification loss reaches lam through the label as well as the image (nothing detached)."""
    model = _model().eval()
    _spread_policy(model, scale=0.5)
    out = model.adamixup_losses(*make_data(8)[:])
    (grad_lam,) = torch.autograd.grad(out["classification_loss"], out["lam"], retain_graph=True)
    logits = out["logits"][:4].detach()
    x, y = make_data(8)[:]
    label_part = (
        F.cross_entropy(logits, y[:4], reduction="none") - F.cross_entropy(logits, y[out["index"]], reduction="none")
    ) / 8
    (image_part,) = torch.autograd.grad(out["classification_loss"], out["mixed"], retain_graph=True)
    image_part = (image_part * (x[:4] - x[out["index"]])).flatten(1).sum(-1)
    torch.testing.assert_close(grad_lam, label_part + image_part, rtol=1e-4, atol=1e-6)


def test_losses_equal_the_authors_rule_on_small_tensors():
    model = _model().eval()
    _spread_policy(model, scale=0.5)
    x, y = make_data(6)[:]
    out = model.adamixup_losses(x, y)
    g = torch.Generator().manual_seed(3)
    reference = authors_adamixup_loss(
        x,
        F.one_hot(y, 10).float(),
        out["perm"],
        out["noise"][0],
        out["noise"][1],
        out["uniform"],
        gate_net=lambda im: model.adamixup_policy_head(model.adamixup_policy_trunk(im)),
        class_net=model,
        disc_net=lambda im: model.adamixup_discriminator(model.forward_features(im)).flip(-1),  # authors' order
        shuffle_cls=torch.randperm(6, generator=g),
        shuffle_bin=torch.randperm(9, generator=g),
    )
    assert abs(float(out["classification_loss"]) - reference["classifier"]) < 1e-5
    assert abs(float(out["intrusion_loss"]) - reference["discriminator"]) < 1e-5
    assert abs(float(out["loss"]) - reference["total"]) < 1e-5
    torch.testing.assert_close(out["lam"].detach(), torch.tensor(reference["weights"]), rtol=0, atol=1e-6)


def test_truncated_noise_and_draws_come_from_the_seeded_stream():
    a, b = _model(mix_seed=4), _model(mix_seed=4)
    x = torch.zeros(10, 1, 28, 28)
    da, db = a.adamixup_draw(x), b.adamixup_draw(x)
    for key in da:
        assert torch.equal(da[key], db[key])
    assert float(da["noise"].abs().max()) <= 2.0 and abs(float(da["noise"].std()) - 0.88) < 0.02
    assert not torch.equal(a.adamixup_draw(x)["noise"], da["noise"])  # the stream moves on
    assert a._adamixup_rng.counter == 2


def test_dense_targets_give_the_same_losses_as_class_indices():
    x, y = make_data(8)[:]
    a, b = _model().eval(), _model().eval()
    b.load_state_dict(a.state_dict())
    out_a, out_b = a.adamixup_losses(x, y), b.adamixup_losses(x, F.one_hot(y, 10).float())
    torch.testing.assert_close(out_a["loss"], out_b["loss"])


def test_shared_trunk_option_reads_the_classifier_trunk():
    class Shared(AdaMixUpSmallCNN):
        def __init__(self):
            super().__init__(width=4, mix_seed=0)
            self.configure_adamixup(feature_dim=16, policy_trunk=None, seed=0)

    model = Shared()
    assert model.adamixup_policy_trunk is None
    _spread_policy(model, scale=0.5)
    out = model.adamixup_losses(*make_data(8)[:])
    assert _grads(model, out["intrusion_loss"], ("head.",)) == 0
    assert not any(n.startswith("adamixup_policy_trunk") for n, _ in model.named_parameters())


def _fit_for_resume(tmp_path, ckpt_path=None, save=False, accumulate=1):
    pl.seed_everything(0)
    model = _model(mix_seed=3)
    callbacks = []
    if save:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        )
    trainer = _trainer(
        max_epochs=2,
        limit_train_batches=4,
        accumulate_grad_batches=accumulate,
        callbacks=callbacks,
        enable_checkpointing=save,
    )
    trainer.fit(model, make_loader(batch_size=6, n=24), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_exact_resume_of_network_heads_optimiser_and_draws(tmp_path, accumulate):
    straight, straight_trainer = _fit_for_resume(tmp_path, save=True, accumulate=accumulate)
    checkpoint = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)
    assert checkpoint["adamixup"]["counter"] == 4  # one draw per micro-batch
    assert any(k.startswith("adamixup_discriminator.") for k in checkpoint["state_dict"])
    resumed, resumed_trainer = _fit_for_resume(tmp_path, ckpt_path=tmp_path / "epoch=0.ckpt", accumulate=accumulate)
    assert resumed_trainer.global_step == straight_trainer.global_step == 8 // accumulate
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    state_a = straight_trainer.optimizers[0].state_dict()["state"]
    state_b = resumed_trainer.optimizers[0].state_dict()["state"]
    assert len(state_a) == len(list(straight.parameters()))  # the heads' moments are in the optimiser
    for key in state_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state_a[key][name], state_b[key][name], rtol=0, atol=0)
    assert straight._adamixup_rng.counter == resumed._adamixup_rng.counter == 8
    loaded = AdaMixUpSmallCNN.load_from_checkpoint(tmp_path / "epoch=1.ckpt")  # rebuilt from the saved hparams
    assert loaded.hparams.width == 4 and loaded.adamixup_policy_trunk is not None
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_bf16_mixed_trains_the_heads_with_float32_regions():
    pl.seed_everything(0)
    model = _model()
    start = [p.detach().clone() for p in model.adamixup_policy_head.parameters()]
    trainer = _trainer(max_steps=2, precision="bf16-mixed")
    trainer.fit(model, make_loader(batch_size=8))
    assert all(torch.isfinite(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/"))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(start, model.adamixup_policy_head.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.adamixup_losses(*make_data(8)[:])
    assert out["region"].dtype == out["lam"].dtype == out["loss"].dtype == torch.float32


def test_errors_name_the_problem():
    class HeadOnly(AdaMixUpSmallCNN):
        def configure_optimizers(self):
            return torch.optim.SGD(self.head.parameters(), lr=0.1)

    with pytest.raises(ValueError, match=r"AdaMixUp's parameters .* are in no optimiser"):
        _trainer(max_steps=1).fit(HeadOnly(width=4), make_loader())
    with pytest.raises(ValueError, match="intrusion_weight must be positive"):
        _model().configure_adamixup(16, intrusion_weight=0.0)
    with pytest.raises(ValueError, match="features_method 'nope' is not a method"):
        _model().configure_adamixup(16, features_method="nope")
    with pytest.raises(ValueError, match="feature_dim must be a positive integer"):
        _model().configure_adamixup(0)
    with pytest.raises(ValueError, match="at least 2 samples per batch"):
        _model().adamixup_losses(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long))


def test_ema_callback_averages_the_generator_and_discriminator_with_the_classifier():
    from lightning_mix.callbacks import EMA

    pl.seed_everything(0)
    model = _model()
    ema = EMA(decay=0.5)
    trainer = _trainer(max_steps=3, callbacks=[ema])
    trainer.fit(model, make_loader(batch_size=4))
    averaged = ema.averaged_state_dict()
    for prefix in ("adamixup_policy_head.", "adamixup_policy_trunk.", "adamixup_discriminator."):
        assert any(k.startswith(prefix) for k in averaged)  # the documented decision
    for name, value in averaged.items():  # EMA owns the final weights: the module holds the average
        torch.testing.assert_close(model.state_dict()[name].float(), value.float())


def test_adamixup_lam_is_alpha_plus_u_delta():
    region = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    torch.testing.assert_close(adamixup_lam(region, torch.tensor([0.5, 1.0])), torch.tensor([0.45, 0.7]))


def test_validation_uses_only_the_classifier():
    model = _model().eval()
    x = make_data(4)[:][0]
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.adamixup_discriminator.parameters():
            p.add_(1.0)
        for p in model.adamixup_policy_head.parameters():
            p.add_(1.0)
        torch.testing.assert_close(model(x), reference(x))
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


MIXER = ("adamixup_policy_head.", "adamixup_policy_trunk.", "adamixup_discriminator.")


def test_swa_averages_the_policy_and_discriminator_with_the_classifier():
    pl.seed_everything(0)
    assert_swa_averages_the_mixer(_model(), make_loader(batch_size=4), MIXER, _trainer)


def test_model_soup_ingredients_hold_the_policy_and_discriminator():
    pl.seed_everything(0)
    assert_soup_ingredients_hold_the_mixer(_model(), make_loader(batch_size=4), MIXER, _trainer)
