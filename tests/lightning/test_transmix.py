"""TransMix in a Trainer: targets relabelled from the training forward's own class attention."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from references.vit_label_rules import transmix_target
from vit_callback_helpers import NUM_CLASSES, LastMixed, OriginalBatch, RecordingViT, fit

from lightning_mix.callbacks import MixingCallback, TransMix
from lightning_mix.callbacks._mixing_base import MixingCallbackBase
from lightning_mix.demos import TinyViT
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import CutMix, Mixup, RandomChoice, SaliencyMix, dense_targets, mix_targets
from lightning_mix.mixing.patch_grid import PatchCutMix


@pytest.mark.parametrize("average_with_area", [True, False])
def test_targets_follow_the_attention_of_the_same_forward(average_with_area):
    torch.manual_seed(0)
    original = OriginalBatch()
    transmix = TransMix(
        CutMix(alpha=1.0, mode="elem"), average_with_area=average_with_area, num_classes=NUM_CLASSES, seed=0
    )
    last = LastMixed(transmix)
    model = fit([original, transmix, last])
    for (x0, labels), record, mixed in zip(original.batches, model.seen, last.mixed):
        base = dense_targets(labels, NUM_CLASSES)
        pasted_pixels = (record["x"] != x0)[:, 0]  # random inputs differ everywhere from their partners
        pasted = pasted_pixels[:, ::4, ::4].reshape(8, -1).float()  # top-left pixel of each 4x4 patch
        area = pasted_pixels.flatten(1).float().mean(1)
        cls = record["attentions"][-1][:, :, 0, 1:].mean(1)
        lam_attn = (cls * (1 - pasted)).sum(1) / cls.sum(1)
        lam = (lam_attn + 1 - area) / 2 if average_with_area else lam_attn
        self_pair = mixed.index == torch.arange(8)
        lam = torch.where(self_pair, 1.0, lam)
        torch.testing.assert_close(mixed.lam, lam, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(record["y"], mix_targets(base, mixed.index, lam), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed.targets, record["y"])  # the MixedBatch contract, with the attention lam
        assert not torch.allclose(lam, 1 - area)  # the attention did change the label


def test_uniform_attention_gives_the_area_lam():
    torch.manual_seed(1)
    model = RecordingViT()
    last_attn = model.blocks[-1].attn
    with torch.no_grad():  # q = k = 0 in the last block: uniform attention
        last_attn.qkv.weight[: 2 * 32].zero_()
        last_attn.qkv.bias[: 2 * 32].zero_()
    last_attn.qkv.weight.register_hook(lambda g: g.index_fill(0, torch.arange(64), 0.0))
    last_attn.qkv.bias.register_hook(lambda g: g.index_fill(0, torch.arange(64), 0.0))
    original = OriginalBatch()
    transmix = TransMix(PatchCutMix(alpha=1.0, patch_size=4, mode="elem"), num_classes=NUM_CLASSES, seed=3)
    last = LastMixed(transmix)
    model = fit([original, transmix, last], model=model, steps=1)
    x0, _ = original.batches[0]
    area = (model.seen[0]["x"] != x0).flatten(1).float().mean(1)
    torch.testing.assert_close(last.mixed[0].lam, 1 - area, atol=1e-6, rtol=1e-6)


def test_interpolated_batches_keep_their_lam():
    torch.manual_seed(2)
    transmix = TransMix(RandomChoice([Mixup(alpha=1.0, mode="elem")]), num_classes=NUM_CLASSES, seed=0)
    reference = MixingCallback(RandomChoice([Mixup(alpha=1.0, mode="elem")]), num_classes=NUM_CLASSES, seed=0)
    last = LastMixed(transmix)
    model = fit([transmix, last], steps=1)
    ref_model = fit([reference], steps=1)
    torch.testing.assert_close(model.seen[0]["y"], ref_model.seen[0]["y"])
    torch.testing.assert_close(last.mixed[0].targets, model.seen[0]["y"])


class NoForward(TinyViT):
    def training_step(self, batch, batch_idx):
        return self.head.weight.sum() * 0.0 + soft_cross_entropy(torch.zeros_like(batch[1]), batch[1])


def test_a_hook_that_never_runs_is_an_error():
    transmix = TransMix(CutMix(), num_classes=NUM_CLASSES, seed=0)
    with pytest.raises(RuntimeError, match="attention hooks did not all run"):
        fit([transmix], model=NoForward(num_classes=NUM_CLASSES, dim=16, depth=1, num_heads=2), steps=1)


def test_misconfiguration_is_caught_before_training():
    with pytest.raises(ValueError, match="SaliencyMix"):
        TransMix(RandomChoice([Mixup(), SaliencyMix()]))
    with pytest.raises(ValueError, match="attention_modules"):
        TransMix(CutMix(), attention_fn=lambda m, a, k, o: o)
    model = RecordingViT()
    with pytest.raises(ValueError, match="not in the model"):
        fit([TransMix(CutMix(), attention_module="blocks.9.attn", num_classes=NUM_CLASSES)], model=model, steps=1)
    assert model.seen == []
    with pytest.raises(ValueError, match="no attention module found"):
        fit([TransMix(CutMix(), num_classes=NUM_CLASSES)], model=_CNN(), steps=1)


class _CNN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, NUM_CLASSES))

    def training_step(self, batch, batch_idx):
        return soft_cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_it_is_a_mixing_callback_and_hooks_are_removed_after_fit():
    transmix = TransMix(CutMix(), num_classes=NUM_CLASSES, seed=0)
    assert isinstance(transmix, MixingCallback) and isinstance(transmix, MixingCallbackBase)
    model = fit([transmix], steps=1)
    assert not model.blocks[-1].attn.qkv._forward_hooks  # a test may read the private dict to see hooks are gone


def test_batch_mode_cutmix_matches_the_authors_transmix_label():
    torch.manual_seed(5)
    original = OriginalBatch()
    transmix = TransMix(CutMix(alpha=1.0, mode="batch"), num_classes=NUM_CLASSES, seed=1)
    model = fit([original, transmix], steps=2)
    for (x0, labels), record in zip(original.batches, model.seen):
        pasted = (record["x"] != x0)[0, 0]  # one box for the batch
        rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
        box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        one_hot = dense_targets(labels, NUM_CLASSES)
        cls = record["attentions"][-1][:, :, 0, 1:].mean(1)
        want = transmix_target(one_hot, one_hot.flip(0), box, (28, 28), cls)  # flip pairing, as the authors'
        torch.testing.assert_close(record["y"], want, atol=1e-5, rtol=1e-5)
