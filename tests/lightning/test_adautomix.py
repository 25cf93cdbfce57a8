"""AdAutoMixMixin under a Trainer: the target network, accumulation, exact resume, bf16, errors, averaging."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from automix_helpers import assert_soup_ingredients_hold_the_mixer, assert_swa_averages_the_mixer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from references.automix_reference import reference_momentum
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.averaging.ema import ema_update_
from lightning_mix.demos import AdAutoMixSmallCNN

GEN = "adautomix_generator."


def _model(**options):
    return AdAutoMixSmallCNN(**{"width": 4, "mix_seed": 0, "cosine_schedule": False, **options})


def _loader(batch_size=4, n=32):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _trainer(**options):
    return tiny_trainer(**{"max_epochs": None, "limit_val_batches": 0, **options})


class _RecordWeights(pl.Callback):
    """The classifier's parameters (the generator excluded) at the start and after every optimisation step."""

    def __init__(self):
        self.snapshots = []
        self.last_step = -1

    def _snapshot(self, module):
        return {n: p.detach().clone() for n, p in module.named_parameters() if not n.startswith(GEN)}

    def on_train_start(self, trainer, module):
        self.snapshots.append(self._snapshot(module))
        self.last_step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step != self.last_step:
            self.snapshots.append(self._snapshot(module))
            self.last_step = trainer.global_step


@pytest.mark.parametrize("accumulate", [1, 2])
def test_target_network_is_ema_update_applied_by_hand(accumulate):
    pl.seed_everything(0)
    model = _model(accumulate_grad_batches=accumulate)
    record = _RecordWeights()
    trainer = _trainer(max_steps=4, callbacks=[record])
    trainer.fit(model, _loader(batch_size=4, n=32))
    assert trainer.global_step == 4 and len(record.snapshots) == 5  # one count per optimisation step
    assert model._automix_rng.counter == 4 * accumulate  # one draw per batch
    expected = [t.clone() for t in record.snapshots[0].values()]
    names = list(record.snapshots[0])
    for step in range(3):  # the update after step t uses the weights after it; the last one is pending
        ema_update_(expected, [record.snapshots[step + 1][n] for n in names], reference_momentum(step, 4))
    state = model.automix_momentum_state()
    assert model._automix_synced_step == 3
    assert not any(n.startswith(GEN) for n in state)
    for name, value in zip(names, expected):
        assert state[name].dtype == torch.float32
        torch.testing.assert_close(state[name], value, rtol=0, atol=1e-7)


def test_trainer_accumulation_is_refused_and_the_mixins_own_accumulates():
    with pytest.raises(MisconfigurationException, match="accumulate_grad_batches"):
        _trainer(max_steps=1, accumulate_grad_batches=2).fit(_model(), _loader())
    # two batches, one optimisation step: the same update as one backward of the two losses' mean by hand
    pl.seed_everything(0)
    model = _model(accumulate_grad_batches=2)
    by_hand = copy.deepcopy(model)
    _trainer(max_steps=1).fit(model, _loader(batch_size=4, n=8))
    optimizers = by_hand.configure_optimizers()
    for x, y in _loader(batch_size=4, n=8):
        (by_hand.adautomix_losses(x, y, adversarial=True)["loss"] / 2).backward()
    for optimizer in optimizers:
        optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), by_hand.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert model._automix_rng.counter == 2


def _fit_for_resume(tmp_path, ckpt_path=None, save=False):
    pl.seed_everything(0)
    model = _model(mix_seed=3, cosine_schedule=True)
    callbacks = []
    if save:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        )
    trainer = _trainer(max_epochs=2, limit_train_batches=3, callbacks=callbacks, enable_checkpointing=save)
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return model, trainer


def test_exact_resume_of_classifier_generator_target_network_optimisers_and_schedulers(tmp_path):
    straight, straight_trainer = _fit_for_resume(tmp_path, save=True)
    checkpoint = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)
    assert set(checkpoint["adautomix"]["momentum"]) == set(straight.automix_momentum_state())
    assert any(k.startswith(GEN) for k in checkpoint["state_dict"])
    assert len(checkpoint["optimizer_states"]) == 2 and len(checkpoint["lr_schedulers"]) == 2
    resumed, resumed_trainer = _fit_for_resume(tmp_path, ckpt_path=tmp_path / "epoch=0.ckpt")
    assert resumed_trainer.global_step == straight_trainer.global_step == 6
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    for n, a in straight.automix_momentum_state().items():
        torch.testing.assert_close(a, resumed.automix_momentum_state()[n], rtol=0, atol=0, msg=n)
    generator_ids = {id(p) for p in straight.adautomix_generator.parameters()}
    for index, (opt_a, opt_b) in enumerate(zip(straight_trainer.optimizers, resumed_trainer.optimizers)):
        state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        owned = [p for group in opt_a.param_groups for p in group["params"]]
        assert len(state_a) == len(owned) and (index == 1) == all(id(p) in generator_ids for p in owned)
        for key in state_a:
            for name in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(state_a[key][name], state_b[key][name], rtol=0, atol=0)
        initial_lr = opt_a.param_groups[0]["initial_lr"]
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] < initial_lr  # the cosine schedule stepped
    assert straight._automix_rng.counter == resumed._automix_rng.counter == 6
    assert straight._automix_synced_step == resumed._automix_synced_step == 5


def test_bf16_mixed_keeps_the_generator_and_target_network_in_float32():
    pl.seed_everything(0)
    model = _model()
    start = [p.detach().clone() for p in model.adautomix_generator.parameters()]
    trainer = _trainer(max_steps=2, precision="bf16-mixed")
    trainer.fit(model, _loader())
    assert all(torch.isfinite(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/"))
    assert all(t.dtype == torch.float32 for t in model.automix_momentum_state().values() if t.is_floating_point())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(start, model.adautomix_generator.parameters()))
    x, y = next(iter(_loader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.adautomix_losses(x, y, adversarial=True)
    assert out["mask_mb"].dtype == torch.float32 and torch.isfinite(out["loss"])


class _GeneratorGrads(pl.Callback):
    """The generator's gradients as its optimiser is about to step (after the precision plugin unscaled them)."""

    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        generator = set(module.adautomix_generator.parameters())
        if any(p in generator for group in optimizer.param_groups for p in group["params"]):
            self.grads.append([p.grad.detach().clone() for p in module.adautomix_generator.parameters()])


def test_16_mixed_unscales_the_generator_by_the_scale_its_backward_used():
    """Lightning updates the GradScaler after each optimiser step; when the classifier's step changes the
    scale (here it doubles at every update), the generator's gradients must still be unscaled by the
    scale of the backward. On CPU Lightning turns "16-mixed" into bf16, so the plugin is given explicitly."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    def run(growth_interval):
        pl.seed_everything(0)
        grads = _GeneratorGrads()
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=growth_interval)
        plugin = MixedPrecision("16-mixed", "cpu", scaler)
        _trainer(max_steps=3, callbacks=[grads], plugins=[plugin]).fit(_model(), _loader())
        return grads.grads, scaler.get_scale()

    growing, final_scale = run(growth_interval=1)
    constant, constant_scale = run(growth_interval=10**9)
    assert final_scale == 1024.0 * 2**6 and constant_scale == 1024.0  # two updates per step, three steps
    assert len(growing) == len(constant) == 3
    for step_growing, step_constant in zip(growing, constant):
        assert all(torch.isfinite(g).all() for g in step_growing)
        assert any(g.abs().sum() > 0 for g in step_growing)
        for a, b in zip(step_growing, step_constant):  # powers of two: the scaling itself is exact
            torch.testing.assert_close(a, b)


def test_errors_at_fit_start_name_the_fix():
    class OneOptimiser(AdAutoMixSmallCNN):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="needs two optimisers"):
        _trainer(max_steps=1).fit(OneOptimiser(width=4), _loader())

    class Swapped(AdAutoMixSmallCNN):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.head.parameters(), lr=0.1)]

    with pytest.raises(ValueError, match="exactly the generator's parameters"):
        _trainer(max_steps=1).fit(Swapped(width=4), _loader())

    class Plateau(AdAutoMixSmallCNN):
        def configure_optimizers(self):
            optimizers = super().configure_optimizers()
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizers[0])
            return optimizers, [{"scheduler": plateau, "monitor": "train/loss"}]

    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        _trainer(max_steps=1).fit(Plateau(width=4, cosine_schedule=False), _loader())
    with pytest.raises(ValueError, match="feature_layer 'block9' is not a layer"):
        model = _model()
        model.automix_feature_layer = "block9"
        _trainer(max_steps=1).fit(model, _loader())


def test_ema_callback_averages_the_generator_with_the_classifier_but_not_the_target_network():
    from lightning_mix.callbacks import EMA

    pl.seed_everything(0)
    model = _model()
    ema = EMA(decay=0.5)
    record = _RecordWeights()
    trainer = _trainer(max_steps=3, callbacks=[ema, record])
    trainer.fit(model, _loader(batch_size=4))
    averaged = ema.averaged_state_dict()
    assert any(k.startswith(GEN) for k in averaged)  # the documented decision
    for name, value in averaged.items():  # EMA owns the final weights, generator included
        torch.testing.assert_close(model.state_dict()[name].float(), value.float())
    trained = record.snapshots  # the target network follows the *trained* weights
    m0, m1 = reference_momentum(0, 3), reference_momentum(1, 3)
    expected = (trained[0]["head.weight"] * m0 + trained[1]["head.weight"] * (1 - m0)) * m1 + trained[2][
        "head.weight"
    ] * (1 - m1)
    torch.testing.assert_close(model.automix_momentum_state()["head.weight"], expected, rtol=0, atol=1e-6)


def test_swa_averages_the_generator_with_the_classifier():
    pl.seed_everything(0)
    assert_swa_averages_the_mixer(_model(), _loader(), (GEN,), _trainer)


def test_model_soup_ingredients_hold_the_generator():
    pl.seed_everything(0)
    assert_soup_ingredients_hold_the_mixer(_model(), _loader(), (GEN,), _trainer)
