"""The SWA callback: the average of epoch-end snapshots, BatchNorm recalibration, annealing, resume."""

from __future__ import annotations

import pytest
import torch
from ema_common import N_TRAIN, TinyBN, float_state
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny_trainer import tiny_trainer

from lightning_mix.callbacks.swa import SWA

pytestmark = pytest.mark.slow


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return tiny_trainer(callbacks=callbacks, **{"max_epochs": 4, "default_root_dir": tmp_path, **kwargs})


class Snapshots(Callback):
    """Independent record of the epoch-end weights and of the learning rate used at every step."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.lrs: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pass

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append((trainer.current_epoch, optimizer.param_groups[0]["lr"]))

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = float_state(pl_module)


def test_swa_is_the_mean_of_epoch_end_snapshots(tmp_path):
    seed_everything(0)
    model = TinyBN()
    swa = SWA(start_epoch=0.5, recalibrate_bn=False)  # 0.5 * 4 epochs -> epochs 2 and 3
    snaps = Snapshots()
    _trainer(tmp_path, [swa, snaps]).fit(model)
    assert swa.num_averaged == 2
    final = float_state(model)
    for name in final:
        expected = (snaps.states[2][name].double() + snaps.states[3][name].double()) / 2
        assert torch.allclose(final[name].double(), expected, atol=1e-6), name
    assert not torch.equal(final["fc1.weight"], snaps.states[3]["fc1.weight"])
    # the learning rate was left alone
    assert {lr for _, lr in snaps.lrs} == {0.1}


def test_recalibrated_bn_equals_statistics_of_the_data(tmp_path):
    seed_everything(0)
    model = TinyBN()
    swa = SWA(start_epoch=1, input_key="x")  # dict batches: the input is batch["x"]
    _trainer(tmp_path, [swa], max_epochs=3).fit(model)
    assert swa.num_averaged == 2
    x = model.train_x.double()
    # the first layer is BN on the raw inputs: its statistics are those of the training inputs
    assert torch.allclose(model.bn_in.running_mean.double(), x.mean(0), atol=1e-5)
    assert torch.allclose(model.bn_in.running_var.double(), x.var(0, unbiased=True), atol=1e-4)
    # the hidden BN sees fc1(bn_in(x)) of the averaged weights, bn_in in training mode (batch statistics)
    hidden = []
    with torch.no_grad():
        for xb in model.train_x.split(model.batch_size):
            z = (xb - xb.mean(0)) / torch.sqrt(xb.var(0, unbiased=False) + model.bn_in.eps)
            hidden.append(model.fc1(z * model.bn_in.weight + model.bn_in.bias))
    h = torch.cat(hidden).double()
    assert torch.allclose(model.bn1.running_mean.double(), h.mean(0), atol=1e-5)
    assert torch.allclose(model.bn1.running_var.double(), h.var(0, unbiased=True), atol=1e-4)


def test_annealing_sets_the_learning_rate(tmp_path):
    seed_everything(0)
    swa = SWA(start_epoch=2, annealing=0.01, annealing_epochs=2, recalibrate_bn=False)
    snaps = Snapshots()
    _trainer(tmp_path, [swa, snaps]).fit(TinyBN(lr=0.1))
    by_epoch = {}
    for epoch, lr in snaps.lrs:
        by_epoch.setdefault(epoch, set()).add(round(lr, 10))
    assert by_epoch[0] == by_epoch[1] == {0.1}
    assert by_epoch[2] == {round(0.01 + 0.09 * 0.5, 10)}  # halfway along the cosine: (1 + cos(pi/2)) / 2
    assert by_epoch[3] == {0.01}


def test_no_snapshot_warns_and_keeps_weights(tmp_path):
    seed_everything(0)
    model = TinyBN()
    swa = SWA(start_epoch=10)
    snaps = Snapshots()
    with pytest.warns(UserWarning, match="averaged no snapshot"):
        _trainer(tmp_path, [swa, snaps], max_epochs=2).fit(model)
    for name, value in float_state(model).items():
        assert torch.equal(value, snaps.states[1][name])


def test_resume_gives_identical_swa_weights(tmp_path):
    def run(max_epochs, callbacks, model, ckpt_path=None, root="x"):
        _trainer(tmp_path / root, callbacks, max_epochs=max_epochs, enable_checkpointing=True).fit(
            model, ckpt_path=ckpt_path
        )

    factory = lambda: SWA(start_epoch=1, annealing=0.05, input_key="x")  # noqa: E731
    seed_everything(0)
    straight = TinyBN()
    run(4, [factory()], straight, root="a")
    seed_everything(0)
    # saved after the epoch-end validation, i.e. before on_train_epoch_end: the snapshot must be in already
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=False)
    run(2, [factory(), ckpt], TinyBN(), root="b")
    seed_everything(0)
    resumed = TinyBN()
    cb = factory()
    run(4, [cb], resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt", root="c")
    assert cb.num_averaged == 3
    a, b = float_state(straight), float_state(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_post_fit_checkpoint_loads_the_swa_model(tmp_path):
    seed_everything(0)
    model = TinyBN()
    swa = SWA(start_epoch=1, input_key="x")
    trainer = _trainer(tmp_path, [swa], max_epochs=2)
    trainer.fit(model)
    path = tmp_path / "swa.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert "current_model_state" in ckpt
    loaded = TinyBN.load_from_checkpoint(path)
    for name, value in float_state(loaded).items():
        assert torch.equal(value, float_state(model)[name]), name


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="fraction"):
        SWA(start_epoch=1.5)
    with pytest.raises(ValueError, match="start_epoch"):
        SWA(start_epoch=-1)
    swa = SWA(start_epoch=0.5)
    with pytest.raises(ValueError, match="max_epochs"):
        _trainer(tmp_path, [swa], max_epochs=-1, max_steps=4).fit(TinyBN())


def test_whole_batch_and_custom_forward(tmp_path):
    calls = []

    def feed(module, batch):
        calls.append(sorted(batch))
        return module(batch["x"])

    seed_everything(0)
    model = TinyBN()
    _trainer(tmp_path, [SWA(start_epoch=0, bn_forward=feed)], max_epochs=1, limit_train_batches=2).fit(model)
    assert calls == [["x", "y"], ["x", "y"]]  # limit_train_batches respected, whole dict batch passed
    assert N_TRAIN > 2 * model.batch_size


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_low_precision_average_is_float32_mean(tmp_path, precision):
    seed_everything(0)
    model = TinyBN(lr=0.05)
    swa = SWA(start_epoch=1, input_key="x")
    snaps = Snapshots()
    _trainer(tmp_path, [swa, snaps], max_epochs=3, precision=precision).fit(model)
    average = swa.averaged_state_dict()
    assert average["fc1.weight"].dtype == torch.float32
    for name in ("fc1.weight", "fc2.bias", "bn1.weight"):
        expected = (snaps.states[1][name].double() + snaps.states[2][name].double()) / 2
        assert torch.allclose(average[name].double(), expected, atol=1e-6), name
        # the module holds the average, rounded to its own dtype
        assert torch.equal(
            getattr(model, name.split(".")[0]).get_parameter(name.split(".")[1]).float(),
            average[name].to(model.fc1.weight.dtype).float(),
        )
    # BatchNorm recalibrated through the precision plugin (bf16 inputs under bf16-true)
    x = model.train_x.double()
    tol = 0.05 if precision == "bf16-true" else 1e-4
    assert torch.allclose(model.bn_in.running_mean.double(), x.mean(0), atol=tol)
