"""SUMixMixin: the step against the authors' rule, the targets contract, gradient routes, Trainer use, resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from references.sumix_authors import authors_in_loss
from tiny_trainer import tiny_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import EMA, MixingCallback
from lightning_mix.demos import SmallCNN, SUMixSmallCNN
from lightning_mix.mixing import CutMix, FMix, Mixup, RandomChoice, ResizeMix, SaliencyMix, dense_targets
from lightning_mix.mixins import SUMixMixin

NUM_CLASSES = 10


def _model(**kwargs) -> SUMixSmallCNN:
    torch.manual_seed(0)
    options = {"width": 4, "mix_seed": 0, "cosine_schedule": False}
    options.update(kwargs)
    return SUMixSmallCNN(**options)


def _data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _loader(n: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(*_data(n)), batch_size=8)


def test_step_follows_the_authors_rule_with_the_per_sample_loss():
    # flip pairing on an even batch never pairs a sample with itself, so every sample has the batch's lam,
    # as the authors' randperm CutMix assumes
    model = _model(mixer=CutMix(alpha=1.0, pairing="flip"), gamma=0.5)
    x, y = _data(8)
    for _ in range(3):
        out = model.sumix_losses(x, y)
        batch, lam = out["batch"], out["lam"]
        assert torch.all(lam == lam[0])
        # train mode forwards of the same batches give the same features (batch statistics)
        clean_features = model.forward_features(x)
        mixed_features = model.forward_features(batch.inputs)
        ref = authors_in_loss(
            model.forward_head(clean_features),
            model.forward_head(mixed_features),
            model.sumix_uncertainty_head(clean_features),
            model.sumix_uncertainty_head(mixed_features),
            y,
            batch.index,
            float(lam[0]),
            gama=0.5,
        )
        torch.testing.assert_close(batch.lam.double(), ref["lam_a"], rtol=0, atol=1e-5)
        assert float(out["uncertainty"].detach()) == pytest.approx(float(ref["reg"]), abs=1e-5)
        # the departure: each sample's own lam_hat weights its own cross-entropies
        log_p = F.log_softmax(out["logits"].double(), -1)
        own, partner = (
            -log_p.gather(1, y.view(-1, 1)).squeeze(1),
            -log_p.gather(1, y[batch.index].view(-1, 1)).squeeze(1),
        )
        per_sample = (batch.lam * own + (1 - batch.lam) * partner).mean()
        assert float(out["mix_loss"].detach()) == pytest.approx(float(per_sample), abs=1e-5)
        assert float(out["loss"].detach()) == pytest.approx(float(per_sample) + 0.5 * float(ref["reg"]), abs=1e-5)


def test_targets_follow_the_mixed_batch_contract_with_the_corrected_ratio():
    model = _model(mixer=CutMix(alpha=1.0, mode="elem", pairing="random"))
    x, y = _data(8)
    out = model.sumix_losses(x, y)
    batch, t = out["batch"], dense_targets(y, NUM_CLASSES)
    lam = batch.lam.view(-1, 1)
    torch.testing.assert_close(batch.targets, lam * t + (1 - lam) * t[batch.index])
    assert bool(((batch.lam >= 0) & (batch.lam <= 1)).all())
    self_paired = batch.index == torch.arange(8)
    assert torch.all(batch.lam[self_paired] == 1)  # a sample mixed with itself keeps its label


def test_an_untrained_uniform_model_keeps_the_mixers_ratio():
    model = _model(mixer=CutMix(alpha=1.0, pairing="flip"))
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)  # uniform clean and mixed predictions: the documented limit lam_hat = lam
    out = model.sumix_losses(*_data(8))
    torch.testing.assert_close(out["batch"].lam, out["lam"], rtol=0, atol=1e-6)


def test_dense_targets_are_mixed_as_given_and_read_by_their_argmax():
    model = _model(mixer=CutMix(alpha=1.0, pairing="flip"))
    x, y = _data(8)
    soft = dense_targets(y, NUM_CLASSES, label_smoothing=0.1)
    out = model.sumix_losses(x, soft)
    batch = out["batch"]
    lam = batch.lam.view(-1, 1)
    torch.testing.assert_close(batch.targets, lam * soft + (1 - lam) * soft[batch.index])
    indexed = _model(mixer=CutMix(alpha=1.0, pairing="flip")).sumix_losses(x, y)["batch"]
    torch.testing.assert_close(batch.lam, indexed.lam)  # same draws, same classes: same correction


@pytest.mark.parametrize(
    "mixer",
    [
        FMix(alpha=1.0, pairing="flip"),
        ResizeMix(pairing="flip"),
        SaliencyMix(alpha=1.0, pairing="flip"),
        RandomChoice([CutMix(1.0, pairing="flip"), Mixup(0.8, pairing="flip")]),
    ],
    ids=["fmix", "resizemix", "saliencymix", "random_choice"],
)
def test_other_mixers_work_underneath_and_keep_the_targets_contract(mixer):
    x, y = _data(8)
    out = _model(mixer=mixer).sumix_losses(x, y)
    batch, t = out["batch"], dense_targets(y, NUM_CLASSES)
    assert torch.isfinite(out["loss"])
    lam = batch.lam.view(-1, 1)
    torch.testing.assert_close(batch.targets, lam * t + (1 - lam) * t[batch.index])


def test_gradients_reach_the_network_and_the_uncertainty_head():
    model = _model(mixer=CutMix(alpha=1.0, pairing="flip"))
    model.sumix_losses(*_data(8))["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gamma_zero_leaves_the_head_untouched_but_in_the_graph():
    model = _model(mixer=CutMix(alpha=1.0, pairing="flip"), gamma=0.0)
    model.sumix_losses(*_data(8))["loss"].backward()
    head = model.sumix_uncertainty_head
    assert head.weight.grad is not None and torch.all(head.weight.grad == 0)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="gamma must be non-negative"):
        _model(gamma=-0.1)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        _model(num_classes=1)
    with pytest.raises(ValueError, match="mixer must be a mixer of lightning_mix.mixing"):
        _model(mixer=lambda x, t, g=None: None)

    class NoFeatures(SUMixMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.configure_sumix(num_classes=3, feature_dim=4)

    with pytest.raises(ValueError, match="forward_features"):
        NoFeatures()

    class Unconfigured(SUMixMixin, SmallCNN):
        forward_features = SUMixSmallCNN.forward_features
        forward_head = SUMixSmallCNN.forward_head

    with pytest.raises(RuntimeError, match="configure_sumix"):
        Unconfigured(width=4).sumix_losses(*_data(4))


def test_dense_targets_of_the_wrong_width_are_refused():
    with pytest.raises(ValueError, match=r"dense targets must have shape \(B, 10\)"):
        _model().sumix_losses(_data(4)[0], torch.rand(4, 3))


def test_trains_in_a_trainer_and_logs_its_terms(tmp_path):
    model = _model()
    head_before = model.sumix_uncertainty_head.weight.detach().clone()
    trainer = tiny_trainer(max_epochs=1, limit_train_batches=3, default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    assert trainer.global_step == 3
    assert not torch.equal(model.sumix_uncertainty_head.weight, head_before)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/mix_loss", "train/uncertainty", "train/lam_shift", "train/acc"):
        assert torch.isfinite(metrics[key]), key
    assert model._sumix_rng.counter == 3


def test_a_mixing_callback_is_refused_with_a_sumix_module(tmp_path):
    trainer = tiny_trainer(callbacks=[MixingCallback(CutMix(), num_classes=NUM_CLASSES)], max_steps=1)
    with pytest.raises(ValueError, match=r"SUMixMixin.*remove the callback"):
        trainer.fit(_model(), _loader())


def test_bf16_mixed_step_is_finite(tmp_path):
    model = _model(mixer=CutMix(alpha=1.0, pairing="flip"))
    trainer = tiny_trainer(max_steps=2, precision="bf16-mixed", default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert model.sumix_last_batch.lam.dtype == torch.float32


def test_composes_with_ema(tmp_path):
    model, ema = _model(), EMA(decay=0.9)
    trainer = tiny_trainer(callbacks=[ema], max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    average = ema.averaged_state_dict()
    assert "sumix_uncertainty_head.weight" in average
    for name, tensor in model.state_dict().items():  # EMA owns the final weights
        torch.testing.assert_close(tensor, average[name], rtol=0, atol=0)


def _fit_for_resume(tmp_path, ckpt_path=None, save=False):
    pl.seed_everything(0)
    model = _model(mix_seed=3, mixer=CutMix(alpha=1.0, mode="elem", pairing="random"))
    callbacks = []
    if save:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        )
    trainer = tiny_trainer(
        max_epochs=2, limit_train_batches=3, callbacks=callbacks, enable_checkpointing=save, default_root_dir=tmp_path
    )
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return model, trainer


def test_exact_resume_of_weights_head_optimiser_and_draws(tmp_path):
    straight, straight_trainer = _fit_for_resume(tmp_path, save=True)
    checkpoint = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)
    assert checkpoint["sumix"] == {"seed": 3, "counter": 3}
    hparams = checkpoint["hyper_parameters"]  # plain values only: resuming loads them with weights_only=True
    assert "mixer" not in hparams and hparams["gamma"] == 0.1 and hparams["mix_seed"] == 3
    resumed, resumed_trainer = _fit_for_resume(tmp_path, ckpt_path=tmp_path / "epoch=0.ckpt")
    assert resumed_trainer.global_step == straight_trainer.global_step == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(straight.sumix_last_batch.lam, resumed.sumix_last_batch.lam, rtol=0, atol=0)
    state_a = straight_trainer.optimizers[0].state_dict()["state"]
    state_b = resumed_trainer.optimizers[0].state_dict()["state"]
    for key in state_a:
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state_a[key][name], state_b[key][name], rtol=0, atol=0)
    assert straight._sumix_rng.counter == resumed._sumix_rng.counter == 6
    loaded = SUMixSmallCNN.load_from_checkpoint(tmp_path / "epoch=1.ckpt")  # plain hparams: loads as is
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert isinstance(loaded.sumix_mixer, CutMix) and loaded.sumix_mixer.alpha == 0.2  # the default mixer
