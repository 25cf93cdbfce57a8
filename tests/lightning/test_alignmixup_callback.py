"""AlignMixup callback in a Trainer: the layer's output is replaced by the aligned mix, or the inputs are mixed."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from puzzlemix_helpers import NUM_CLASSES, TinyCNN, image_data
from torch.utils.data import DataLoader

from lightning_mix.callbacks import AlignMixup
from lightning_mix.mixing import dense_targets, mix_targets
from lightning_mix.mixing.alignment import align_and_mix


def _fit(callback, model, steps=2, data=None):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        val_check_interval=1,
        callbacks=[callback],
    )
    trainer.fit(model, DataLoader(data or image_data(32), batch_size=16), DataLoader(image_data(16), batch_size=16))
    return trainer


def test_feature_branch_replaces_the_layer_output_with_the_aligned_mix():
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    align = AlignMixup(layer="body", input_prob=0.0, threshold=None, seed=1)
    seen = []

    def capture(module, args, output):  # registered first: sees the layer's own output
        if module.training:
            seen.append(("out", output.detach().clone()))

    def capture_next(module, args):  # the next module's input: what the mix hook returned
        if module.training:
            seen.append(("in", args[0].detach().clone(), align.last_index, align.last_lam, align.last_choice))

    model.body.register_forward_hook(capture)
    model.drop.register_forward_pre_hook(capture_next)
    data = image_data(32)
    _fit(align, model, steps=2, data=data)
    assert align._handle is None
    outs = [s for s in seen if s[0] == "out"]
    ins = [s for s in seen if s[0] == "in"]
    assert len(outs) == len(ins) == 2
    for (_, out), (_, mixed, index, lam, direction) in zip(outs, ins):
        assert direction in (0, 1)
        expected = align_and_mix(out, index, lam, direction, threshold=None).flatten(1)
        torch.testing.assert_close(mixed, expected)
    # targets follow lam: training_step saw lam t + (1 - lam) t[index]
    first_labels = dense_targets(data.tensors[1][:16], NUM_CLASSES)
    torch.testing.assert_close(model.train_seen[0][1], mix_targets(first_labels, ins[0][2], ins[0][3]))


def test_input_branch_mixes_the_inputs_as_mixup():
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    align = AlignMixup(layer="body", input_prob=1.0, seed=1)
    data = image_data(16)
    _fit(align, model, steps=1, data=data)
    x = data.tensors[0]
    assert align.last_choice == "input"
    lam = align.last_lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(model.train_seen[0][0], lam * x + (1 - lam) * x[align.last_index])


def test_unknown_layer_and_bad_options_raise():
    with pytest.raises(ValueError, match="no module named 'nope'"):
        _fit(AlignMixup(layer="nope"), TinyCNN())
    with pytest.raises(ValueError, match="input_prob is a probability"):
        AlignMixup(layer="body", input_prob=2.0)


def test_feature_branch_runs_under_bf16_mixed():
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    align = AlignMixup(layer="body", input_prob=0.0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[align],
    )
    trainer.fit(model, DataLoader(image_data(32), batch_size=16))
    assert align.last_choice in (0, 1) and align._handle is None
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_continues_the_draws(tmp_path):
    data = image_data(16)  # one batch per epoch: every step sees the same clean batch

    def run(steps, ckpt=None, save=None):
        pl.seed_everything(0)
        model = TinyCNN(dropout=0.0)
        align = AlignMixup(layer="body", seed=4, threshold=None)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[align],
        )
        trainer.fit(model, DataLoader(data, batch_size=16), ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return model.train_seen

    full = run(4)
    run(2, save=tmp_path / "half.ckpt")
    resumed = run(4, ckpt=tmp_path / "half.ckpt")
    assert len(resumed) == 2
    for (x_full, y_full), (x_res, y_res) in zip(full[2:], resumed):
        torch.testing.assert_close(x_res, x_full)
        torch.testing.assert_close(y_res, y_full)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(full[:2], full[2:]))  # the draws did change
