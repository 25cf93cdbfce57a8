"""TokenShuffle in a Trainer: order restored around each layer, equivariant ViT blocks unchanged, eval untouched."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from tiny_trainer import tiny_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from vit_callback_helpers import NUM_CLASSES, make_data

from lightning_mix.callbacks import TokenShuffle
from lightning_mix.callbacks._mixing_base import MixingCallbackBase
from lightning_mix.demos import TinyViT


def trainer(callbacks, steps=1, **kwargs):
    options = {"max_epochs": None, "max_steps": steps, "devices": "auto", "num_sanity_val_steps": 2, **kwargs}
    return tiny_trainer(callbacks=callbacks, **options)


class CumSum(nn.Module):
    """An order-sensitive token mixer: a running sum over the tokens."""

    def forward(self, x):
        return x.cumsum(dim=1)


class OrderSensitive(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 1)
        self.layers = nn.Sequential(CumSum(), CumSum(), CumSum())
        self.seen: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def training_step(self, batch, batch_idx):
        tokens = batch[0]  # (B, N, 1)
        outs, x = [], tokens
        for layer in self.layers:
            x = layer(x)
            outs.append(x.detach().clone())
        self.seen.append((tokens.clone(), outs))
        return (self.embed(x) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_shuffled_layer_output_is_the_layer_on_permuted_tokens_restored():
    data = TensorDataset(torch.arange(8.0).view(1, 8, 1).repeat(4, 1, 1), torch.zeros(4))
    shuffle = TokenShuffle(layers=["layers.0", "layers.1", "layers.2"], shuffle_rate=1.0, seed=0)
    model = OrderSensitive()
    trainer([shuffle]).fit(model, DataLoader(data, batch_size=4))
    tokens, outs = model.seen[0]
    assert shuffle.probabilities == pytest.approx([0.0, 0.5, 1.0])
    assert 0 not in shuffle.last_permutations  # layer 0 has probability 0
    assert 2 in shuffle.last_permutations  # the last layer has probability 1
    x = tokens
    for position, out in enumerate(outs):
        perm = shuffle.last_permutations.get(position)
        if perm is None:
            want = x.cumsum(1)
        else:  # by hand: run the layer on x[:, perm], then put token perm[i] back at position perm[i]
            shuffled = x[:, perm].cumsum(1)
            want = torch.empty_like(shuffled)
            want[:, perm] = shuffled
        torch.testing.assert_close(out, want)
        x = want
    assert not torch.equal(outs[2], outs[1].cumsum(1))  # the shuffle did change the order-sensitive layer


def test_vit_blocks_are_permutation_equivariant_so_the_logits_do_not_change():
    torch.manual_seed(0)
    model = TinyViT(num_classes=NUM_CLASSES, dim=32, depth=3, num_heads=2)
    x = torch.randn(4, 1, 28, 28)
    shuffle = TokenShuffle(shuffle_rate=1.0, seed=0)
    fit_trainer = trainer([shuffle])
    shuffle.setup(fit_trainer, model, "fit")
    assert shuffle.probabilities == pytest.approx([0.0, 0.5, 1.0])
    shuffle.on_fit_start(fit_trainer, model)
    model.train()
    plain = model(x)
    shuffle.on_train_batch_start(fit_trainer, model, [x], 0)
    shuffled = model(x)
    assert 2 in shuffle.last_permutations
    torch.testing.assert_close(shuffled, plain, atol=1e-5, rtol=1e-5)
    shuffle.on_train_batch_end(fit_trainer, model, None, [x], 0)
    shuffle.teardown(fit_trainer, model, "fit")
    assert not model.blocks[2]._forward_pre_hooks  # a test may read the private dict to see hooks are gone


def test_evaluation_and_forwards_outside_training_batches_are_untouched():
    x = torch.arange(6.0).view(1, 6, 1).repeat(2, 1, 1)
    plain = x.cumsum(1).cumsum(1)
    model = OrderSensitive()
    model.layers = nn.Sequential(CumSum(), CumSum())
    shuffle = TokenShuffle(layers=["layers.0", "layers.1"], shuffle_rate=1.0, seed=0)
    t = trainer([shuffle])
    shuffle.setup(t, model, "fit")
    shuffle.on_fit_start(t, model)
    model.train()
    torch.testing.assert_close(model.layers(x), plain)  # outside a training batch
    shuffle.on_train_batch_start(t, model, [x], 0)
    model.eval()
    torch.testing.assert_close(model.layers(x), plain)  # eval mode inside a batch (e.g. an extra clean forward)
    model.train()
    assert not torch.equal(model.layers(x), plain)  # training forward: the last layer (p = 1) is shuffled
    shuffle.on_train_batch_end(t, model, None, [x], 0)
    torch.testing.assert_close(model.layers(x), plain)
    shuffle.teardown(t, model, "fit")


def test_it_is_not_a_mixing_callback_and_bad_input_is_refused():
    assert not isinstance(TokenShuffle(), MixingCallbackBase)
    with pytest.raises(ValueError, match="shuffle_rate"):
        TokenShuffle(shuffle_rate=1.5)
    with pytest.raises(ValueError, match="not in the model"):
        trainer([TokenShuffle(layers=["nope"])]).fit(OrderSensitive(), DataLoader(make_data(), batch_size=8))
    with pytest.raises(ValueError, match="no attention blocks"):
        trainer([TokenShuffle()]).fit(OrderSensitive(), DataLoader(make_data(), batch_size=8))


def test_resume_continues_the_same_draws(tmp_path):
    data = TensorDataset(torch.arange(8.0).view(1, 8, 1).repeat(16, 1, 1), torch.zeros(16))
    full = TokenShuffle(layers=["layers.0", "layers.1", "layers.2"], shuffle_rate=1.0, seed=3)
    trainer([full], steps=4).fit(OrderSensitive(), DataLoader(data, batch_size=4))
    first = TokenShuffle(layers=["layers.0", "layers.1", "layers.2"], shuffle_rate=1.0, seed=3)
    t = trainer([first], steps=2)
    t.fit(OrderSensitive(), DataLoader(data, batch_size=4))
    t.save_checkpoint(tmp_path / "half.ckpt")
    resumed = TokenShuffle(layers=["layers.0", "layers.1", "layers.2"], shuffle_rate=1.0, seed=99)
    trainer([resumed], steps=4).fit(OrderSensitive(), DataLoader(data, batch_size=4), ckpt_path=tmp_path / "half.ckpt")
    assert resumed.last_permutations.keys() == full.last_permutations.keys()
    for k in full.last_permutations:
        torch.testing.assert_close(resumed.last_permutations[k], full.last_permutations[k])
