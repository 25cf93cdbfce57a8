"""MNIST5kDataModule's 2-fold cross-validation splits: halves of the training images, seeded, swapped by fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_mix.demos import MNIST5kDataModule, cv_half_split, embedded_data_path


def _rows_of(images: torch.Tensor, reference: torch.Tensor) -> set[int]:
    """Indices into ``reference`` of each image (MNIST5k has no duplicate images among these)."""
    keys = {bytes(img.numpy().tobytes()): i for i, img in enumerate(reference)}
    return {keys[bytes(img.numpy().tobytes())] for img in images}


def _setup(**options) -> MNIST5kDataModule:
    data = MNIST5kDataModule(random_shift=0, normalize=False, **options)
    data.setup()
    return data


def test_folds_are_swapped_halves_of_the_training_images():
    default = _setup()
    train_images = default.train_set.tensors[0]
    fold0, fold1 = _setup(cv_repeat=1, cv_fold=0), _setup(cv_repeat=1, cv_fold=1)
    train0 = _rows_of(fold0.train_set.tensors[0], train_images)
    test0 = _rows_of(fold0.test_set.tensors[0], train_images)
    assert len(train0) == len(test0) == 1750 and not train0 & test0 and train0 | test0 == set(range(3500))
    assert _rows_of(fold1.train_set.tensors[0], train_images) == test0
    assert _rows_of(fold1.test_set.tensors[0], train_images) == train0
    assert torch.equal(fold0.val_set.tensors[0], default.val_set.tensors[0])  # validation unchanged
    other_repeat = _rows_of(_setup(cv_repeat=2, cv_fold=0).test_set.tensors[0], train_images)
    assert other_repeat != test0
    _, test_rows = cv_half_split(3500, 0, 1, 0)  # the rows in the order the test loader yields them
    assert torch.equal(fold0.test_set.tensors[1], default.train_set.tensors[1][test_rows])


def test_defaults_are_the_fixed_split():
    data = _setup()
    with np.load(embedded_data_path("mnist5k.npz")) as raw:
        labels = torch.from_numpy(raw["labels"]).long()
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(data.test_set.tensors[1], labels[order][4000:])
    assert len(data.train_set) == 3500


def test_label_noise_stays_on_the_training_half():
    clean, noisy = _setup(cv_repeat=0, cv_fold=1), _setup(cv_repeat=0, cv_fold=1, label_noise=0.5)
    assert torch.equal(clean.test_set.tensors[1], noisy.test_set.tensors[1])
    assert (clean.train_set.tensors[1] != noisy.train_set.tensors[1]).double().mean() == pytest.approx(0.5, abs=1e-3)


def test_bad_fold_arguments():
    with pytest.raises(ValueError, match="go together"):
        MNIST5kDataModule(cv_repeat=0)
    with pytest.raises(ValueError, match="cv_fold 0 or 1"):
        MNIST5kDataModule(cv_repeat=0, cv_fold=2)
