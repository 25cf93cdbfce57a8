"""ManifoldMixup: hidden-state mixing read back through hooks, one-shot hooks, eval untouched, Trainer runs."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.callbacks.manifold_mixup import ManifoldMixup
from lightning_mix.demos import MNIST5kDataModule, SmallCNN


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 6)
        self.l2 = nn.Linear(6, 5)
        self.l3 = nn.Linear(5, 3)

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def _fake_trainer(rank=0):
    return SimpleNamespace(global_rank=rank, datamodule=None)


def _started(callback, net, rank=0):
    callback.on_fit_start(_fake_trainer(rank), net)
    return callback


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)]


def test_hidden_state_is_mixed_and_other_layers_untouched():
    torch.manual_seed(0)
    net = Net().train()
    seen = {}
    # registered before the callback's hook, so it records l1's raw output
    net.l1.register_forward_hook(lambda m, a, out: seen.__setitem__("h", out.detach().clone()))
    net.l1.register_forward_pre_hook(lambda m, a: seen.__setitem__("l1_in", a[0].detach().clone()))
    net.l2.register_forward_pre_hook(lambda m, a: seen.__setitem__("l2_in", a[0].detach().clone()))
    callback = _started(ManifoldMixup(layers=["l1"], alpha=2.0, num_classes=3, mode="elem", seed=3), net)
    batch = _batch()
    x, y = batch[0].clone(), batch[1].clone()
    callback.on_train_batch_start(None, net, batch, 0)
    index, lam = callback.last_index, callback.last_lam
    assert callback.last_layer == "l1"
    moved = index != torch.arange(8)
    assert moved.sum() >= 4 and ((lam[moved] > 0) & (lam[moved] < 1)).all() and (lam[~moved] == 1).all()
    out = net(batch[0])
    h = seen["h"]
    expected_h = lam[:, None] * h + (1 - lam[:, None]) * h[index]
    torch.testing.assert_close(seen["l2_in"], torch.relu(expected_h))
    torch.testing.assert_close(seen["l1_in"], x)  # inputs untouched
    torch.testing.assert_close(batch[0], x)
    torch.testing.assert_close(out, net.l3(torch.relu(net.l2(torch.relu(expected_h)))))
    onehot = F.one_hot(y, 3).float()
    torch.testing.assert_close(batch[1], lam[:, None] * onehot + (1 - lam[:, None]) * onehot[index])
    # one shot: a second training forward in the same step is clean
    torch.testing.assert_close(net(x), net.l3(torch.relu(net.l2(torch.relu(net.l1(x))))))
    callback.on_train_batch_end(None, net, None, batch, 0)
    assert callback._handle is None


def test_eval_forward_is_never_mixed_and_hook_removed_at_batch_end():
    torch.manual_seed(1)
    net = Net()
    callback = _started(ManifoldMixup(layers=["l2"], num_classes=3, seed=0), net)
    batch = _batch()
    x = batch[0].clone()
    callback.on_train_batch_start(None, net, batch, 1)
    net.eval()
    with torch.no_grad():
        clean = net(x)
    assert callback._handle is not None  # eval forwards do not consume or apply the hook
    torch.testing.assert_close(clean, Net.forward(net, x))
    callback.on_validation_start(None, net)
    assert callback._handle is None and not net.l2._forward_hooks
    net.train()
    callback.on_train_batch_start(None, net, batch, 2)
    callback.on_train_batch_end(None, net, None, batch, 2)
    assert not net.l2._forward_hooks
    torch.testing.assert_close(net(x), Net.forward(net, x))


def test_input_layer_mixes_inputs_in_place_and_layer_choice_is_uniform():
    net = Net().train()
    callback = _started(ManifoldMixup(layers=["input"], num_classes=3, seed=1), net)
    batch = _batch()
    x = batch[0].clone()
    callback.on_train_batch_start(None, net, batch, 0)
    lam, index = callback.last_lam, callback.last_index
    assert (lam == lam[0]).all()  # mode="batch": one lam per step
    torch.testing.assert_close(batch[0], lam[:, None] * x + (1 - lam[:, None]) * x[index])
    callback = _started(ManifoldMixup(layers=["input", "l1", "l2"], num_classes=3, seed=2), net)
    counts = {"input": 0, "l1": 0, "l2": 0}
    for step in range(300):
        callback.on_train_batch_start(None, net, _batch(), step)
        counts[callback.last_layer] += 1
        callback.on_train_batch_end(None, net, None, None, step)
    assert all(70 < c < 130 for c in counts.values()), counts


def test_bad_layer_name_lists_valid_names_and_tuple_batch_fails():
    net = Net()
    with pytest.raises(ValueError, match=r"no module named \['block9'\].*'input', 'l1', 'l2', 'l3'"):
        _started(ManifoldMixup(layers=["l1", "block9"]), net)
    callback = _started(ManifoldMixup(layers=["l1"], num_classes=3), net)
    with pytest.raises(TypeError, match="tuple"):
        callback.on_train_batch_start(None, net, tuple(_batch()), 0)


def test_seeded_stream_resume_and_ranks():
    net = Net().train()

    def draws(callback, steps, start=0):
        out = []
        for step in range(start, start + steps):
            callback.on_train_batch_start(None, net, _batch(), step)
            out.append((callback.last_layer, callback.last_lam.clone(), callback.last_index.clone()))
            callback.on_train_batch_end(None, net, None, None, step)
        return out

    layers = ["input", "l1", "l2"]
    full = draws(_started(ManifoldMixup(layers=layers, seed=5, num_classes=3), net), 6)
    first = _started(ManifoldMixup(layers=layers, seed=5, num_classes=3), net)
    draws(first, 3)
    resumed = ManifoldMixup(layers=layers, seed=5, num_classes=3)
    resumed.load_state_dict(first.state_dict())
    _started(resumed, net)
    rest = draws(resumed, 3)
    for (l1, a1, i1), (l2, a2, i2) in zip(full[3:], rest):
        assert l1 == l2 and torch.equal(a1, a2) and torch.equal(i1, i2)
    other_rank = draws(_started(ManifoldMixup(layers=layers, seed=5, num_classes=3), net, rank=1), 6)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(full, other_rank))


class _CheckingCNN(SmallCNN):
    """SmallCNN that checks what each stage sees."""

    def training_step(self, batch, batch_idx):
        targets = batch[1]
        assert targets.is_floating_point() and targets.shape == (batch[0].shape[0], 10)
        torch.testing.assert_close(targets.sum(-1), torch.ones(targets.shape[0]))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        assert not any(m._forward_hooks for m in self.modules()), "a Manifold Mixup hook leaked into validation"
        return super().validation_step(batch, batch_idx)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_trainer_fit(precision):
    pl.seed_everything(0)
    model = _CheckingCNN(width=4)
    callback = ManifoldMixup(layers=["input", "block1", "block2"], alpha=2.0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(model, MNIST5kDataModule(batch_size=16))
    assert callback.num_classes == 10  # read from the module's hparams
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert callback._stream.counter == 4
    assert not any(m._forward_hooks for m in model.modules())


def test_class_pairing_reads_the_targets():
    net = Net().train()
    callback = _started(
        ManifoldMixup(layers=["l1"], num_classes=3, pairing="different_class", mode="elem", seed=0), net
    )
    batch = [torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])]
    y = batch[1].clone()
    callback.on_train_batch_start(None, net, batch, 0)
    assert (y[callback.last_index] != y).all()
    callback.on_train_batch_end(None, net, None, batch, 0)
