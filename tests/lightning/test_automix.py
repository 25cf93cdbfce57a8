"""AutoMixMixin: masks and lam, the Mixup limit, the momentum copy, gradient routes, resume, precision, errors."""

import copy

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from automix_helpers import MODELS, AutoMixCNN, SAMixCNN, make_data, make_loader
from references.automix_reference import reference_momentum
from tiny_trainer import tiny_trainer
from torch import nn

from lightning_mix.mixing.mix_block import automix_momentum


def _data(n=32, seed=0):
    return make_data(n, seed)


def _loader(batch_size=8, n=32):
    return make_loader(batch_size, n)


def _trainer(**options):
    return tiny_trainer(**{"max_epochs": None, "limit_val_batches": 0, **options})


@pytest.mark.parametrize("method", sorted(MODELS))
def test_masks_in_unit_interval_with_one_stated_lam_per_batch(method):
    torch.manual_seed(0)
    model = MODELS[method]()
    x, y = _data(8)[:]
    for _ in range(6):
        out = model.automix_losses(x, y)
        for key in ("mask_mb", "mask_bb"):
            mask = out[key]
            assert mask.shape == (8, 1, 28, 28) and bool(((mask >= 0) & (mask <= 1)).all())
        for key in ("lam_mb", "lam_bb"):
            lam = out[key]
            assert lam.shape == (8,) and bool((lam == lam[0]).all()) and 0 < float(lam[0]) < 1
        lam_bb = float(out["lam_bb"][0])
        if min(lam_bb, 1 - lam_bb) <= model.automix_lam_margin:  # plain Mixup: a constant mask at the stated lam
            torch.testing.assert_close(out["mask_bb"], torch.full_like(out["mask_bb"], 1 - lam_bb))


def test_lam_margin_replaces_the_classifier_mask_by_lam():
    model = AutoMixCNN(lam_margin=0.4999)
    x, y = _data(8)[:]
    hits = 0
    for _ in range(8):
        out = model.automix_losses(x, y)
        lam_bb = float(out["lam_bb"][0])
        if min(lam_bb, 1 - lam_bb) <= 0.4999:
            hits += 1
            torch.testing.assert_close(out["mask_bb"], torch.full_like(out["mask_bb"], 1 - lam_bb))
    assert hits >= 6


class _ConstantMask(nn.Module):
    """A frozen 'Mix Block' giving the partner the share 1 - lam everywhere."""

    def forward(self, features, index, lam, size):
        return (1 - lam).view(-1, 1, 1, 1).expand(-1, 1, *size) + 0 * features.sum()


def _mixup_loss(net, x, y, index, lam):
    mixed = lam * x + (1 - lam) * x[index]
    logits = net(mixed)
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[index])


@pytest.mark.parametrize("method", sorted(MODELS))
def test_constant_mask_gives_mixups_loss_at_that_lam(method):
    torch.manual_seed(0)
    model = MODELS[method]()
    model.automix_block = _ConstantMask()
    x, y = _data(8)[:]
    reference = copy.deepcopy(model)  # the momentum copy starts equal to the network
    out = model.automix_losses(x, y)
    lam_bb, lam_mb = float(out["lam_bb"][0]), float(out["lam_mb"][0])
    # same BatchNorm batches as the mixin: the mixed batch first, then the clean one (train mode)
    expected_mix = _mixup_loss(reference, x, y, out["index_bb"], lam_bb)
    expected_clean = F.cross_entropy(reference(x), y)
    expected_block = _mixup_loss(reference, x, y, out["index_mb"], lam_mb)  # train-mode BN: same weights, same output
    torch.testing.assert_close(out["mix_loss"], expected_mix, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["clean_loss"], expected_clean, rtol=1e-5, atol=1e-6)
    assert abs(float(out["mask_loss"])) < 1e-12  # the mask's mean is 1 - lam (to float rounding)
    torch.testing.assert_close(out["loss"], out["mix_loss"] + out["clean_loss"] + out["block_loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out["block_loss"], expected_block, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", sorted(MODELS))
def test_gradients_reach_the_mix_block_only_through_its_two_losses(method):
    torch.manual_seed(0)
    model = MODELS[method]()
    with torch.no_grad():  # a non-uniform Mix Block, so its gradients are not negligible
        for p in model.automix_block.parameters():
            p.normal_(std=0.3)
    x, y = _data(8)[:]
    out = model.automix_losses(x, y)
    block = list(model.automix_block.parameters())
    net = [p for n, p in model.named_parameters() if not n.startswith("automix_block.")]

    def grads(loss, params):
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    for term in ("mix_loss", "clean_loss"):  # the classifier's losses: masks detached
        assert all(g is None for g in grads(out[term], block)), term
    for term in ("block_loss", "mask_loss"):  # the Mix Block's losses: the momentum copy takes no gradient
        assert all(g is None for g in grads(out[term], net)), term
    total_block = grads(out["loss"], block)
    own = grads(out["block_loss"] + 0.1 * out["mask_loss"], block)
    for a, b in zip(total_block, own):
        torch.testing.assert_close(a, b)
    assert sum(float(g.abs().sum()) for g in own) > 0
    total_net = grads(out["loss"], net)
    classifier = grads(out["mix_loss"] + out["clean_loss"], net)
    for a, b in zip(total_net, classifier):
        torch.testing.assert_close(a, b)


class _RecordWeights(pl.Callback):
    """The network's parameters (the Mix Block excluded) at the start and after every optimiser step."""

    def __init__(self):
        self.snapshots = []
        self.last_step = -1

    def _snapshot(self, module):
        return {n: p.detach().clone() for n, p in module.named_parameters() if not n.startswith("automix_block.")}

    def on_train_start(self, trainer, module):
        self.snapshots.append(self._snapshot(module))
        self.last_step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step != self.last_step:
            self.snapshots.append(self._snapshot(module))
            self.last_step = trainer.global_step


@pytest.mark.parametrize("accumulate", [1, 2])
def test_momentum_copy_is_the_authors_ema_applied_by_hand(accumulate):
    pl.seed_everything(0)
    model = AutoMixCNN()
    record = _RecordWeights()
    trainer = _trainer(max_steps=4, accumulate_grad_batches=accumulate, callbacks=[record])
    trainer.fit(model, _loader(batch_size=4, n=32))
    total = trainer.estimated_stepping_batches
    assert trainer.global_step == 4 and len(record.snapshots) == 5
    assert model._automix_rng.counter == 4 * accumulate  # one draw per micro-batch
    expected = {n: t.clone() for n, t in record.snapshots[0].items()}
    # the update after optimiser step t uses the weights after it; the last one is pending
    for step in range(3):
        m = reference_momentum(step, total)
        for n in expected:
            expected[n] = expected[n] * m + record.snapshots[step + 1][n] * (1 - m)
    state = model.automix_momentum_state()
    assert model._automix_synced_step == 3
    for n, value in expected.items():
        assert state[n].dtype == torch.float32
        torch.testing.assert_close(state[n], value, rtol=0, atol=1e-6)
    assert not any(n.startswith("automix_block.") for n in state)


def test_momentum_sync_is_lazy_and_once_per_step():
    model = AutoMixCNN()
    model.automix_sync_momentum(0, 10)
    before = {n: t.clone() for n, t in model.automix_momentum_state().items()}
    with torch.no_grad():
        model.head.weight.add_(1.0)
    model.automix_sync_momentum(0, 10)  # same step: no update
    torch.testing.assert_close(model.automix_momentum_state()["head.weight"], before["head.weight"])
    model.automix_sync_momentum(1, 10)
    m = automix_momentum(0, 10)
    torch.testing.assert_close(
        model.automix_momentum_state()["head.weight"], before["head.weight"] * m + model.head.weight.detach() * (1 - m)
    )


def _fit_for_resume(tmp_path, ckpt_path=None, save=False, method="automix"):
    pl.seed_everything(0)
    model = MODELS[method](seed=3)
    callbacks = []
    if save:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        )
    trainer = _trainer(max_epochs=2, limit_train_batches=3, callbacks=callbacks, enable_checkpointing=save)
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("method", sorted(MODELS))
def test_exact_resume_of_network_mix_block_momentum_copy_and_optimiser(tmp_path, method):
    straight, straight_trainer = _fit_for_resume(tmp_path, save=True, method=method)
    checkpoint = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)
    assert set(checkpoint["automix"]["momentum"]) == set(straight.automix_momentum_state())
    assert any(k.startswith("automix_block.") for k in checkpoint["state_dict"])
    resumed, resumed_trainer = _fit_for_resume(tmp_path, ckpt_path=tmp_path / "epoch=0.ckpt", method=method)
    assert resumed_trainer.global_step == straight_trainer.global_step == 6
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    for n, a in straight.automix_momentum_state().items():
        torch.testing.assert_close(a, resumed.automix_momentum_state()[n], rtol=0, atol=0, msg=n)
    state_a = straight_trainer.optimizers[0].state_dict()["state"]
    state_b = resumed_trainer.optimizers[0].state_dict()["state"]
    assert len(state_a) == len(list(straight.parameters()))  # the Mix Block's moments are in the optimiser
    for key in state_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state_a[key][name], state_b[key][name], rtol=0, atol=0)
    assert straight._automix_rng.counter == resumed._automix_rng.counter == 6


@pytest.mark.parametrize("method", sorted(MODELS))
def test_bf16_mixed_keeps_the_mix_block_and_momentum_copy_in_float32(method):
    pl.seed_everything(0)
    model = MODELS[method]()
    start = [p.detach().clone() for p in model.automix_block.parameters()]
    trainer = _trainer(max_steps=2, precision="bf16-mixed")
    trainer.fit(model, _loader())
    assert all(torch.isfinite(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/"))
    assert all(t.dtype == torch.float32 for t in model.automix_momentum_state().values() if t.is_floating_point())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(start, model.automix_block.parameters()))
    x, y = _data(4)[:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.automix_losses(x, y)
    assert out["mask_mb"].dtype == torch.float32


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="feature_layer 'block9' is not a layer"):
        _trainer(max_steps=1).fit(AutoMixCNN(feature_layer="block9"), _loader())

    class HeadOnly(AutoMixCNN):
        def configure_optimizers(self):
            return torch.optim.SGD(self.head.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="Mix Block's parameters .* are in no optimiser"):
        _trainer(max_steps=1).fit(HeadOnly(), _loader())
    with pytest.raises(ValueError, match="block_weight must be positive"):
        AutoMixCNN().configure_automix("block2", 8, block_weight=0.0)
    with pytest.raises(ValueError, match="logits_method"):
        AutoMixCNN().configure_automix("block2", 8, logits_method="nope")
    model = AutoMixCNN()
    model.automix_feature_layer = "automix_block.query"  # a layer the network's forward never runs
    with pytest.raises(RuntimeError, match="never ran the feature layer"):
        model.automix_features(torch.randn(2, 1, 28, 28))


def test_ema_callback_averages_the_mix_block_with_the_classifier_but_not_the_momentum_copy():
    from lightning_mix.callbacks import EMA

    pl.seed_everything(0)
    model = AutoMixCNN()
    ema = EMA(decay=0.5)
    record = _RecordWeights()
    trainer = _trainer(max_steps=3, callbacks=[ema, record])
    trainer.fit(model, _loader(batch_size=4))
    averaged = ema.averaged_state_dict()
    assert any(k.startswith("automix_block.") for k in averaged)  # the documented decision
    # EMA owns the final weights: the module now holds the average, Mix Block included
    for name, value in averaged.items():
        torch.testing.assert_close(model.state_dict()[name].float(), value.float())
    # the momentum copy follows the *trained* weights (its own schedule), not EMA's average
    m0, m1 = (reference_momentum(s, trainer.estimated_stepping_batches) for s in (0, 1))
    trained = record.snapshots
    expected = (trained[0]["head.weight"] * m0 + trained[1]["head.weight"] * (1 - m0)) * m1 + trained[2][
        "head.weight"
    ] * (1 - m1)
    torch.testing.assert_close(model.automix_momentum_state()["head.weight"], expected, rtol=0, atol=1e-6)


def test_true_bf16_network_runs_its_float32_momentum_copy_in_bf16():
    torch.manual_seed(0)
    model = AutoMixCNN().to(torch.bfloat16)
    x, y = _data(4)[:]
    out = model.automix_losses(x.to(torch.bfloat16), y)
    assert torch.isfinite(out["loss"]) and out["mask_mb"].dtype == torch.float32
    state = model.automix_momentum_state()
    assert state["head.weight"].dtype == torch.float32
    torch.testing.assert_close(state["head.weight"], model.head.weight.float())


def test_samix_defaults_are_the_authors():
    from lightning_mix.mixing.mix_block import SAMixBlock

    model = SAMixCNN(width=8)
    block = model.automix_block
    assert isinstance(block, SAMixBlock) and block.upsample_mode == "bilinear" and block.lam_mul_k == 0.25
    assert block.value[0].out_channels == 8  # C // 2 (the authors: 128 of 256)
    assert model.automix_mask_adjust == 0.25 and model.automix_mask_variance_weight == 2.0
    assert (model.automix_alpha, model.automix_mask_weight, model.automix_mask_margin, model.automix_lam_margin) == (
        2.0,
        0.1,
        0.1,
        0.08,
    )
    assert not any(isinstance(m, type(AutoMixCNN().automix_block)) for m in model.modules())  # replaced, not kept


def test_samix_mask_adjustment_gives_each_sample_exactly_lam():
    torch.manual_seed(0)
    model = SAMixCNN(mask_adjust=1.0, lam_margin=0.0)
    with torch.no_grad():  # a non-uniform Mix Block
        for p in model.automix_block.parameters():
            p.normal_(std=0.3)
    x, y = _data(8)[:]
    for _ in range(3):
        out = model.automix_losses(x, y)
        own = (1 - out["mask_bb"]).mean(dim=(1, 2, 3))
        torch.testing.assert_close(own, out["lam_bb"], rtol=1e-5, atol=1e-5)
        assert out["mask_mb"].std() > 1e-4  # the Mix Block's own mask is not adjusted
    with pytest.raises(ValueError, match="mask_adjust is a probability"):
        SAMixCNN(mask_adjust=1.5)


def test_dense_targets_give_the_same_losses_as_class_indices():
    torch.manual_seed(0)
    model = AutoMixCNN()
    twin = copy.deepcopy(model)  # same weights, same seeded stream
    x, y = _data(8)[:]
    a = model.automix_losses(x, y)
    b = twin.automix_losses(x, F.one_hot(y, 10).float())
    for key in ("loss", "mix_loss", "clean_loss", "block_loss", "mask_loss"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_logits_method_other_than_forward():
    class DictOutput(AutoMixCNN):
        def forward(self, x):  # a forward that does not return logits
            return {"logits": super().forward(x)}

        def classify(self, x):
            return self(x)["logits"]

    torch.manual_seed(0)
    model = DictOutput()
    model.configure_automix("block2", 8, logits_method="classify", seed=0)
    x, y = _data(4)[:]
    out = model.automix_losses(x, y)
    assert torch.isfinite(out["loss"]) and out["logits"].shape == (4, 10)
    assert model.automix_features(x).shape == (4, 8, 7, 7)
