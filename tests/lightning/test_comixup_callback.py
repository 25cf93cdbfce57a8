"""CoMixup callback in a Trainer: what training_step receives, bf16-mixed, errors, exact resume on SmallCNN."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from puzzlemix_helpers import NUM_CLASSES, TinyCNN, image_data
from torch.utils.data import DataLoader

from lightning_mix.callbacks import CoMixup
from lightning_mix.demos import SmallCNN


def _trainer(callbacks, steps=2, **options):
    settings = {
        "accelerator": "cpu",
        "max_steps": steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
    }
    return pl.Trainer(callbacks=callbacks, **{**settings, **options})


class Recorder(pl.Callback):
    """Placed after CoMixup: the batch as training_step will receive it, and the clean one before."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((batch[0].detach().float().clone(), batch[1].detach().float().clone()))


def test_training_step_receives_the_mix_with_targets_from_the_mask_shares():
    pl.seed_everything(0)
    model = TinyCNN()
    comix = CoMixup(block_num=4, part_size=8, seed=3)
    data = image_data(32)
    clean = [(x.clone(), y.clone()) for x, y in DataLoader(data, batch_size=16)]
    weights = []
    original = CoMixup.on_train_batch_start

    def record(self, trainer, pl_module, batch, batch_idx):
        original(self, trainer, pl_module, batch, batch_idx)
        weights.append((self.last_mixed, self.last_weights))

    comix.on_train_batch_start = record.__get__(comix)
    _trainer([comix], steps=2).fit(model, DataLoader(data, batch_size=16))
    assert model.eval_autocast == []  # by default the pass runs in train mode (authors' clean_lam = 1)
    for (x, y), (mixed, w), (_, labels) in zip(model.train_seen, weights, clean):
        torch.testing.assert_close(x, mixed.inputs)
        dense = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
        torch.testing.assert_close(y, w @ dense)  # a mixture of possibly more than two inputs' targets
        torch.testing.assert_close(w.sum(dim=1), torch.ones(16))
        assert (w[:8, 8:] == 0).all()  # two partitions of 8
        torch.testing.assert_close(mixed.lam, w.max(dim=1).values)


def test_bf16_mixed_run_keeps_float32_mixes_and_valid_weights():
    pl.seed_everything(0)
    model = TinyCNN()
    comix = CoMixup(block_num=2, part_size=16, saliency_eval_mode=True)  # eval mode: TinyCNN records autocast
    _trainer([comix], steps=2, precision="bf16-mixed").fit(model, DataLoader(image_data(32), batch_size=16))
    assert model.eval_autocast == [True, True]  # the saliency pass ran under the Trainer's precision
    assert comix.last_mixed.inputs.dtype == torch.float32
    w = comix.last_weights
    assert ((w >= 0) & (w <= 1)).all() and torch.allclose(w.sum(dim=1), torch.ones(16))
    assert all(torch.isfinite(x).all() and torch.isfinite(y).all() for x, y in model.train_seen)


def test_bad_block_number_raises_before_any_step():
    model = TinyCNN()
    with pytest.raises(ValueError, match="block_num 3 does not divide the image size 8x8"):
        _trainer([CoMixup(block_num=3)]).fit(model, DataLoader(image_data(32), batch_size=16))
    assert model.train_seen == []


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="alpha must be positive"):
        CoMixup(alpha=0)
    with pytest.raises(ValueError, match="channel_reduce must be one of"):
        CoMixup(channel_reduce="sum")
    with pytest.raises(ValueError, match="p is a probability"):
        CoMixup(p=1.5)


def test_resume_on_small_cnn_continues_the_mix_sequence_exactly(tmp_path):
    data = image_data(16)  # one batch per epoch: every step sees the same clean batch

    def run(steps, ckpt=None, save=None):
        pl.seed_everything(0)
        model = SmallCNN(num_classes=NUM_CLASSES, in_channels=3, width=4)
        recorder = Recorder()
        trainer = _trainer([CoMixup(block_num=4, part_size=8, seed=5), recorder], steps=steps)
        trainer.fit(model, DataLoader(data, batch_size=16), ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return recorder.seen

    full = run(4)
    run(2, save=tmp_path / "half.ckpt")
    resumed = run(4, ckpt=tmp_path / "half.ckpt")
    assert len(resumed) == 2
    for (x_full, y_full), (x_res, y_res) in zip(full[2:], resumed):
        torch.testing.assert_close(x_res, x_full)
        torch.testing.assert_close(y_res, y_full)
    assert not torch.equal(full[2][0], full[3][0])  # the model and the draws moved on between steps
