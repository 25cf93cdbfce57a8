"""SMMixMixin: the step against the authors' rule, hand-worked labels, loss weights, Trainer composition."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from references.smmix_authors import authors_losses, authors_smmix
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import EMA, MixingCallback, TemperatureScaling
from lightning_mix.demos import SMMixTinyViT
from lightning_mix.mixing import CutMix, dense_targets

NUM_CLASSES = 5


def _model(**kwargs) -> SMMixTinyViT:
    torch.manual_seed(0)
    options = {"num_classes": NUM_CLASSES, "dim": 32, "depth": 2, "num_heads": 2, "mix_seed": 0}
    options.update(kwargs)
    return SMMixTinyViT(**options)


def _data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _reference_attention(model: SMMixTinyViT, x: torch.Tensor) -> torch.Tensor:
    """The last block's softmax map from a non-fused eval forward (hooked at attn_drop's input)."""
    store = []
    attn = model.blocks[-1].attn
    handle = attn.attn_drop.register_forward_hook(lambda _m, args, _o: store.append(args[0].detach()))
    attn.fused_attn = False
    model.eval()
    with torch.no_grad():
        clean_logits = model(x)
    model.train()
    attn.fused_attn = True
    handle.remove()
    return store[0], clean_logits


def test_step_follows_the_authors_rule_and_losses():
    model = _model(switch_prob=1.0)
    model.train()
    x, y = _data(6)
    attention, clean_logits = _reference_attention(model, x)
    out = model.smmix_losses(x, y)
    assert out["mode"] == "smmix"
    side = round(math.sqrt((1 - out["lam"]) * 49))
    assert model.smmix_side_choices(7) == [1, 2, 3, 4, 5]  # int(7 * 0.25) .. int(7 * 0.75)
    assert side in (1, 2, 3, 4, 5)
    scores = attention[:, :, 1:, 1:].mean(dim=(1, 2))
    want_mixed, source_mask, lam = authors_smmix(x, scores, side, 4)
    torch.testing.assert_close(model.smmix_last_inputs, want_mixed)
    features = model.forward_features(want_mixed)
    y_dense = dense_targets(y, NUM_CLASSES, 0.1)
    cls, fine, con = authors_losses(
        model.forward_head(features), features[:, 1:], model.smmix_token_head, source_mask, clean_logits, y_dense, lam
    )
    torch.testing.assert_close(out["cls"], cls)
    torch.testing.assert_close(out["fine"], fine)
    torch.testing.assert_close(out["consistency"], con)
    torch.testing.assert_close(out["loss"], cls + fine + con)


def test_mixed_label_by_hand_on_a_two_by_two_grid():
    # 8x8 images, patch 4: a 2x2 grid, so the window side is 1 (int(0.5) -> 1 .. int(1.5) = 1), lam = 3/4
    torch.manual_seed(0)
    model = SMMixTinyViT(num_classes=3, image_size=8, patch_size=4, dim=16, depth=1, num_heads=2, mix_seed=0)
    model.configure_smmix(num_classes=3, embed_dim=16, switch_prob=1.0, seed=0)
    x = torch.randn(2, 1, 8, 8)
    out = model.smmix_losses(x, torch.tensor([0, 2]))
    assert out["lam"] == 0.75
    on, off = 0.9 + 0.1 / 3, 0.1 / 3
    target = torch.tensor(
        [
            [0.75 * on + 0.25 * off, off, 0.25 * on + 0.75 * off],
            [0.25 * on + 0.75 * off, off, 0.75 * on + 0.25 * off],
        ]
    )
    want = -(target * out["logits"].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out["cls"], want)
    # exactly one patch of each image changed, and it is a whole 4x4 patch of the partner
    changed = (model.smmix_last_inputs != x).reshape(2, 1, 2, 4, 2, 4).any(dim=(1, 3, 5))
    assert changed.sum(dim=(1, 2)).tolist() == [1, 1]


def test_mixup_steps_mix_the_flipped_batch():
    model = _model(switch_prob=0.0)
    x, y = _data(5)
    out = model.smmix_losses(x, y)
    lam = out["lam"]
    assert out["mode"] == "mixup" and 0 < lam < 1
    torch.testing.assert_close(model.smmix_last_inputs, lam * x + (1 - lam) * x.flip(0))
    dense = dense_targets(y, NUM_CLASSES, 0.1)
    want = -((lam * dense + (1 - lam) * dense.flip(0)) * out["logits"].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out["cls"], want)
    assert out["fine"] == 0 and out["consistency"] == 0


@pytest.mark.parametrize("name", ["consistency_weight", "fine_weight"])
def test_loss_weight_scales_its_term(name):
    x, y = _data(6)
    base = _model(switch_prob=1.0).smmix_losses(x, y)
    heavy = _model(switch_prob=1.0, **{name: 3.0}).smmix_losses(x, y)
    off = _model(switch_prob=1.0, **{name: 0.0}).smmix_losses(x, y)
    term = "consistency" if name == "consistency_weight" else "fine"
    assert base[term] > 0
    torch.testing.assert_close(heavy[term], base[term])
    torch.testing.assert_close(heavy["loss"] - off["loss"], 3.0 * base[term])
    torch.testing.assert_close(base["loss"] - off["loss"], base[term])


def test_draws_follow_switch_prob_and_the_window_sides():
    model = _model()
    draws = [model.smmix_draw(7) for _ in range(400)]
    share = sum(use for use, _, _ in draws) / len(draws)
    assert 0.42 < share < 0.58
    assert {side for _, side, _ in draws} == {1, 2, 3, 4, 5}


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="switch_prob"):
        _model(switch_prob=1.5)
    with pytest.raises(ValueError, match="min_side_ratio"):
        _model(min_side_ratio=0.8, max_side_ratio=0.5)
    with pytest.raises(ValueError, match="non-negative"):
        _model(consistency_weight=-1.0)


def test_window_sides_leave_the_image_some_of_its_own_patches():
    assert _model(min_side_ratio=0.5, max_side_ratio=1.0).smmix_side_choices(7) == [3, 4, 5, 6]
    assert _model(min_side_ratio=1.0, max_side_ratio=1.0).smmix_side_choices(4) == [3]
    with pytest.raises(ValueError, match="2 x 2"):
        _model().smmix_side_choices(1)


def _trainer(callbacks=(), **kwargs):
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": list(callbacks),
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def _loader(n: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(*_data(n)), batch_size=8)


def test_trains_in_a_trainer_and_updates_the_token_head(tmp_path):
    model = _model(switch_prob=1.0)
    head_before = model.smmix_token_head.weight.detach().clone()
    trainer = _trainer(max_epochs=1, limit_train_batches=3, default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    assert trainer.global_step == 3
    assert not torch.equal(model.smmix_token_head.weight, head_before)
    metrics = trainer.callback_metrics
    assert all(torch.isfinite(metrics[k]) for k in ("train/loss", "train/cls", "train/fine", "train/consistency"))
    assert metrics["train/consistency"] > 0


def test_composes_with_ema_and_temperature_scaling(tmp_path):
    model = _model()
    scaling, ema = TemperatureScaling(), EMA(decay=0.9)
    trainer = _trainer([ema, scaling], max_epochs=2, limit_val_batches=2, default_root_dir=tmp_path)
    trainer.fit(model, _loader(), _loader(16))
    assert trainer.state.finished and trainer.global_step == 8
    average = ema.averaged_state_dict()
    assert "smmix_token_head.weight" in average  # the token head is a parameter like any other
    for name, tensor in model.state_dict().items():  # EMA owns the final weights: the module holds the average
        torch.testing.assert_close(tensor, average[name], rtol=0, atol=0)
    assert scaling.fitted and 0.05 <= scaling.temperature <= 20.0


def test_bf16_mixed_step_is_finite(tmp_path):
    model = _model(switch_prob=1.0)
    trainer = _trainer(max_steps=2, precision="bf16-mixed", default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_a_mixing_callback_is_refused_with_an_smmix_module(tmp_path):
    trainer = _trainer([MixingCallback(CutMix(), num_classes=NUM_CLASSES)], max_steps=1, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"SMMixMixin.*remove the callback"):
        trainer.fit(_model(), _loader())


def test_the_stream_resumes_from_the_checkpoint():
    model = _model()
    model.smmix_draw(7)
    model.smmix_draw(7)
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    want = model.smmix_draw(7)
    restored = _model(mix_seed=123)
    restored.on_load_checkpoint(checkpoint)
    assert restored.smmix_draw(7) == want
