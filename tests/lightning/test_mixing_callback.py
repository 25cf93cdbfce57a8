"""MixingCallback through a Trainer: dense targets, untouched evaluation, p, stop_epoch, resume, DDP, bf16."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from mixing_callback_helpers import (
    NUM_CLASSES,
    DictDataset,
    LamRecorder,
    RecordingClassifier,
    loader,
    make_data,
    tuple_collate,
)
from tiny_trainer import tiny_trainer

from lightning_mix.callbacks import MixingCallback
from lightning_mix.mixing import Mixup, dense_targets

pytestmark = pytest.mark.slow


def trainer(**kwargs) -> pl.Trainer:
    return tiny_trainer(**{"num_sanity_val_steps": 2, **kwargs})


def fit(callback, epochs: int = 1, data=None, model=None, **trainer_kwargs) -> RecordingClassifier:
    data = data if data is not None else make_data()
    model = model or RecordingClassifier()
    trainer(max_epochs=epochs, callbacks=[callback], **trainer_kwargs).fit(model, loader(data), loader(data))
    return model


def test_training_step_sees_dense_targets_and_validation_is_untouched():
    data = make_data()
    model = fit(MixingCallback(Mixup(alpha=1.0), num_classes=NUM_CLASSES, seed=0), data=data)
    originals = torch.stack([data[i][0] for i in range(16)])
    labels = torch.stack([data[i][1] for i in range(16)])
    x, y = model.train_seen[0]
    assert y.shape == (16, NUM_CLASSES)
    torch.testing.assert_close(y.sum(-1), torch.ones(16))
    assert not torch.allclose(x, originals)  # mixed
    for val_x, val_y in model.val_seen[:1]:
        torch.testing.assert_close(val_x, originals)
        assert val_y.dtype == torch.int64
        torch.testing.assert_close(val_y, labels)


def test_mixed_inputs_and_targets_follow_the_contract_per_batch():
    data = make_data()
    recorder = LamRecorder(Mixup(alpha=1.0, mode="elem"))
    callback = MixingCallback(recorder, num_classes=NUM_CLASSES, seed=3)
    model = fit(callback, data=data)
    originals = torch.stack([data[i][0] for i in range(16)])
    one_hot = dense_targets(torch.stack([data[i][1] for i in range(16)]), NUM_CLASSES)
    x, y = model.train_seen[0]
    lam = recorder.lams[0]
    assert lam.shape == (16,)
    # targets[i] = lam_i t_i + (1 - lam_i) t_j for some partner j with the same j for inputs.
    for i in range(16):
        matches = [
            j
            for j in range(16)
            if torch.allclose(x[i], lam[i] * originals[i] + (1 - lam[i]) * originals[j], atol=1e-5)
            and torch.allclose(y[i], lam[i] * one_hot[i] + (1 - lam[i]) * one_hot[j], atol=1e-6)
        ]
        assert matches, f"sample {i} is not lam * x_i + (1 - lam) * x_j for any j"


def test_label_smoothing_and_p_zero_give_smoothed_dense_targets_and_clean_inputs():
    data = make_data()
    model = fit(MixingCallback(Mixup(), num_classes=NUM_CLASSES, label_smoothing=0.2, p=0.0), data=data)
    x, y = model.train_seen[0]
    labels = torch.stack([data[i][1] for i in range(16)])
    off, on = 0.2 / NUM_CLASSES, 1 - 0.2 + 0.2 / NUM_CLASSES
    expected = torch.full((16, NUM_CLASSES), off)
    expected[torch.arange(16), labels] = on
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(x, torch.stack([data[i][0] for i in range(16)]))


def test_p_mixes_about_that_fraction_of_batches():
    recorder = LamRecorder(Mixup())
    fit(MixingCallback(recorder, num_classes=NUM_CLASSES, p=0.5, seed=1), epochs=10, data=make_data(64))
    mixed = len(recorder.lams)
    assert 8 <= mixed <= 32, f"{mixed} of 40 batches mixed with p=0.5"


def test_stop_epoch_stops_mixing():
    data = make_data(32)
    model = fit(MixingCallback(Mixup(), num_classes=NUM_CLASSES, stop_epoch=1, seed=0), epochs=3, data=data)
    originals = torch.stack([data[i][0] for i in range(16)])
    assert len(model.train_seen) == 6
    assert not torch.allclose(model.train_seen[0][0], originals)
    for _, y in model.train_seen[2:]:
        assert torch.equal(y.max(-1).values, torch.ones(16))  # one-hot: unmixed
    torch.testing.assert_close(model.train_seen[2][0], originals)


def test_dict_batches_and_num_classes_from_the_module():
    data = DictDataset(make_data())
    model = RecordingClassifier(input_key="image", target_key="label")
    fit(MixingCallback(Mixup(), input_key="image", target_key="label", seed=0), data=data, model=model)
    x, y = model.train_seen[0]
    assert y.shape == (16, NUM_CLASSES)
    torch.testing.assert_close(y.sum(-1), torch.ones(16))


def test_tuple_batch_raises_an_explained_error():
    data = make_data()
    model = RecordingClassifier()
    callback = MixingCallback(Mixup(), num_classes=NUM_CLASSES)
    with pytest.raises(TypeError, match=r"tuple.*list or a dict"):
        trainer(callbacks=[callback]).fit(model, loader(data, collate_fn=tuple_collate))


def test_missing_num_classes_and_bad_labels_raise():
    class NoClasses(RecordingClassifier):
        def __init__(self):
            super().__init__()
            self.hparams.pop("num_classes")

    with pytest.raises(ValueError, match="num_classes"):
        fit(MixingCallback(Mixup()), model=NoClasses())
    with pytest.raises(ValueError, match=r"label \d+ is out of range for num_classes=3"):
        fit(MixingCallback(Mixup(), num_classes=3))


def test_resumed_run_continues_the_same_lam_sequence(tmp_path):
    data = make_data(32)

    def run(epochs, ckpt_path=None, save_to=None):
        recorder = LamRecorder(Mixup(alpha=1.0, mode="elem"))
        callback = MixingCallback(recorder, num_classes=NUM_CLASSES, seed=7)
        model = RecordingClassifier()
        t = trainer(max_epochs=epochs, callbacks=[callback])
        t.fit(model, loader(data), ckpt_path=ckpt_path)
        if save_to:
            t.save_checkpoint(save_to)
        return recorder.lams

    full = run(4)
    first = run(2, save_to=tmp_path / "half.ckpt")
    resumed = run(4, ckpt_path=tmp_path / "half.ckpt")
    assert len(full) == 8 and len(first) == 4 and len(resumed) == 4
    for a, b in zip(full, first + resumed):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(full[0], full[1])


def test_bf16_mixed_precision_run_mixes():
    recorder = LamRecorder(Mixup())
    model = fit(MixingCallback(recorder, num_classes=NUM_CLASSES, seed=0), precision="bf16-mixed")
    x, y = model.train_seen[0]
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.sum(-1), torch.ones(16))
    assert len(recorder.lams) == 4
