"""TLAlign in a Trainer: the class token's traced label of the same forward becomes the target."""

from __future__ import annotations

import pytest
import torch
from references.vit_label_rules import tl_align_class_label
from vit_callback_helpers import NUM_CLASSES, LastMixed, OriginalBatch, RecordingViT, fit

from lightning_mix.callbacks import MixingCallback, TLAlign
from lightning_mix.mixing import CutMix, Mixup, RandomChoice, dense_targets, mix_targets
from lightning_mix.mixing.patch_grid import PatchCutMix


@pytest.mark.parametrize("depth", [1, 3])
def test_class_label_equals_the_authors_rule_on_the_forward_attention(depth):
    torch.manual_seed(depth)
    original = OriginalBatch()
    tl_align = TLAlign(PatchCutMix(alpha=1.0, patch_size=4), num_classes=NUM_CLASSES, label_smoothing=0.1, seed=0)
    last = LastMixed(tl_align)
    model = fit([original, tl_align, last], model=RecordingViT(depth=depth), steps=2)
    assert tl_align.num_hooked_modules == 0  # hooks removed after fit
    for (x0, labels), record, mixed in zip(original.batches, model.seen, last.mixed):
        assert len(record["attentions"]) == depth
        own = dense_targets(labels, NUM_CLASSES, 0.1)
        partner = own.index_select(0, mixed.index)
        pasted_pixels = (record["x"] != x0)[:, 0]
        pasted = pasted_pixels[:, ::4, ::4].reshape(8, -1).float()
        lam_area = 1 - pasted_pixels.flatten(1).float().mean(1)
        want = tl_align_class_label(own, partner, lam_area, pasted, record["attentions"])
        torch.testing.assert_close(record["y"], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(record["y"], mix_targets(own, mixed.index, mixed.lam), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(mixed.lam, lam_area)


def test_interpolated_batches_keep_their_lam():
    tl_align = TLAlign(RandomChoice([Mixup(alpha=1.0, mode="elem")]), num_classes=NUM_CLASSES, seed=0)
    reference = MixingCallback(RandomChoice([Mixup(alpha=1.0, mode="elem")]), num_classes=NUM_CLASSES, seed=0)
    torch.manual_seed(0)
    model = fit([tl_align], steps=1)
    torch.manual_seed(0)
    ref_model = fit([reference], steps=1)
    torch.testing.assert_close(model.seen[0]["y"], ref_model.seen[0]["y"])


def test_modules_out_of_forward_order_are_an_error():
    tl_align = TLAlign(CutMix(), attention_modules=["blocks.1.attn", "blocks.0.attn"], num_classes=NUM_CLASSES)
    with pytest.raises(RuntimeError, match="order the forward pass runs them"):
        fit([tl_align], steps=1)


def test_a_preset_style_config_is_a_single_mixing_callback():
    tl_align = TLAlign(PatchCutMix(patch_size=4), label_smoothing=0.1)
    assert isinstance(tl_align, MixingCallback)
    with pytest.raises(ValueError, match="attention_modules"):
        TLAlign(CutMix(), attention_fn=lambda m, a, k, o: o)
