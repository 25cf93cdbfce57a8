"""PuzzleMix callback in a Trainer: what training_step receives, the saliency pass's side effects, errors, resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from puzzlemix_helpers import NUM_CLASSES, TinyCNN, grad_snapshot, image_data
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader

from lightning_mix.callbacks import PuzzleMix


def _trainer(callbacks, steps=2, **options):
    settings = {"max_epochs": None, "max_steps": steps, "limit_val_batches": 0, "devices": "auto"}
    return tiny_trainer(callbacks=callbacks, **{**settings, **options})


def test_training_step_receives_the_mix_and_parameter_gradients_are_untouched():
    pl.seed_everything(0)
    model = TinyCNN()
    puzzle = PuzzleMix(block_nums=[2, 4], solver="torch", seed=3)
    mixes = []
    original = PuzzleMix.on_train_batch_start

    def record(self, trainer, pl_module, batch, batch_idx):
        clean = batch[0].clone()
        original(self, trainer, pl_module, batch, batch_idx)
        mixes.append((clean, self.last_mixed))

    class Before(pl.Callback):
        def __init__(self) -> None:
            self.seen: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(grad_snapshot(pl_module))

    puzzle.on_train_batch_start = record.__get__(puzzle)
    before = Before()
    _trainer([before, puzzle], steps=3).fit(model, DataLoader(image_data(48), batch_size=16))
    assert len(model.train_seen) == 3
    for (x, y), (clean, mixed) in zip(model.train_seen, mixes):
        torch.testing.assert_close(x, mixed.inputs)
        assert y.shape == (16, NUM_CLASSES)
        torch.testing.assert_close(y, mixed.targets)
        assert not torch.equal(x, clean)
    # the saliency pass left the parameters' gradients as they were (None at first, then the last step's)
    assert len(before.seen) == len(model.grads_seen) == 3
    for ahead, seen in zip(before.seen, model.grads_seen):
        for a, b in zip(ahead, seen):
            assert (a is None and b is None) or torch.equal(a, b)
    assert any(g is not None for g in model.grads_seen[-1])
    assert model.training and model.drop.training  # eval mode of the pass was undone


def test_saliency_pass_runs_in_eval_mode_under_the_trainer_precision_and_restores_frozen_modules():
    pl.seed_everything(0)
    model = TinyCNN()

    class FreezeBN(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            pl_module.body[1].eval()

    puzzle = PuzzleMix(block_nums=[2], solver="torch")
    _trainer([FreezeBN(), puzzle], steps=2, precision="bf16-mixed").fit(
        model, DataLoader(image_data(32), batch_size=16)
    )
    assert model.eval_autocast == [True, True]
    assert not model.body[1].training and model.body[0].training
    assert puzzle.last_mixed.inputs.dtype == torch.float32


def test_bad_block_numbers_raise_before_any_step():
    model = TinyCNN()
    puzzle = PuzzleMix(block_nums=[2, 3], solver="torch")
    with pytest.raises(ValueError, match=r"block_nums \[3\] do not divide the image size 8x8"):
        _trainer([puzzle]).fit(model, DataLoader(image_data(32), batch_size=16))
    assert model.train_seen == []


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="alpha must be positive"):
        PuzzleMix(alpha=0)
    with pytest.raises(ValueError, match="channel_reduce must be one of"):
        PuzzleMix(channel_reduce="sum")
    with pytest.raises(ValueError, match="solver must be one of"):
        PuzzleMix(solver="maxflow")


@pytest.mark.parametrize(
    "options",
    [{}, {"adv_p": 0.7, "clean_lam": 0.5, "pixel_mean": [0.5], "pixel_std": [0.25]}],
    ids=["defaults", "adversarial-clean-loss"],
)
def test_resume_continues_the_mix_sequence(tmp_path, options):
    data = image_data(16)  # one batch per epoch: every step sees the same clean batch, whatever the loop resumes at

    def run(steps, ckpt=None, save=None):
        pl.seed_everything(0)
        model = TinyCNN(dropout=0.0)  # dropout's global RNG is not in a checkpoint; the mix stream is
        puzzle = PuzzleMix(block_nums=[2, 4], solver="torch", seed=5, **options)
        trainer = _trainer([puzzle], steps=steps)
        trainer.fit(model, DataLoader(data, batch_size=16), ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return model.train_seen, [p.detach().clone() for p in model.parameters()]

    full, full_params = run(4)
    run(2, save=tmp_path / "half.ckpt")
    resumed, resumed_params = run(4, ckpt=tmp_path / "half.ckpt")
    assert len(resumed) == 2
    for (x_full, y_full), (x_res, y_res) in zip(full[2:], resumed):
        torch.testing.assert_close(x_res, x_full, rtol=0, atol=0)
        torch.testing.assert_close(y_res, y_full, rtol=0, atol=0)
    for a, b in zip(full_params, resumed_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
