"""Embedded data sets as LightningDataModules: MNIST5k (classification) and diabetes (regression).

Both files travel inside the package (``lightning_mix/demos/data``); nothing is downloaded.
Provenance: ``lightning_mix/demos/data/PROVENANCE.md``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "DiabetesDataModule",
    "MNIST5kDataModule",
    "RandomShiftDataset",
    "cv_half_split",
    "embedded_data_path",
    "symmetric_label_noise",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def embedded_data_path(name: str) -> Path:
    """Path of an embedded data file (``mnist5k.npz`` or ``diabetes.npz``)."""
    return Path(str(resources.files("lightning_mix.demos") / "data" / name))


def _seeded_permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def symmetric_label_noise(labels: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """Replace a ``rate`` fraction of labels (chosen at random) by a different class, uniformly.

    Exactly ``round(rate * n)`` labels change, each to one of the other ``num_classes - 1``
    classes with equal probability, so the noise rate is what was asked for.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label_noise must lie in [0, 1), got {rate}.")
    generator = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    n_flip = int(round(rate * labels.numel()))
    flip = torch.randperm(labels.numel(), generator=generator)[:n_flip]
    shift = torch.randint(1, num_classes, (n_flip,), generator=generator)
    noisy[flip] = (labels[flip] + shift) % num_classes
    return noisy


def cv_half_split(n: int, seed: int, repeat: int, fold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, test rows) of fold ``fold`` (0 or 1) of repetition ``repeat`` of 2-fold CV over ``n`` rows.

    The repetition's permutation is seeded by ``seed`` and ``repeat``; fold 0 trains on its first
    ``n // 2`` rows and tests on the rest, fold 1 the reverse.
    """
    order = _seeded_permutation(n, 7919 + 10_000 * seed + repeat)
    halves = (order[: n // 2], order[n // 2 :])
    return halves[fold], halves[1 - fold]


class RandomShiftDataset(Dataset):
    """Images ``(N, 1, H, W)`` and labels; each access shifts the image by up to ``max_shift`` pixels
    in each direction (``torchvision.transforms.v2.RandomCrop`` with that padding), filling the
    uncovered border with ``fill`` (the background value). Items are ``(image, label)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_shift: int, fill: float) -> None:
        if max_shift < 1:
            raise ValueError(f"max_shift must be at least 1 pixel, got {max_shift}.")
        self.images, self.labels = images, labels
        self.transform = v2.RandomCrop(size=tuple(images.shape[-2:]), padding=max_shift, fill=fill)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


class _SplitDataModule(pl.LightningDataModule):
    """Loaders over the ``train_set``/``val_set``/``test_set`` a subclass builds in ``setup``
    (predict uses the test split); ``batch_size`` and ``num_workers`` are set by the subclass.
    """

    batch_size: int
    num_workers: int
    train_set: Dataset | None
    val_set: TensorDataset | None
    test_set: TensorDataset | None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class MNIST5kDataModule(_SplitDataModule):
    """5,000 MNIST digits shipped with the package: 3500 train / 500 val / 1000 test.

    The split comes from a permutation seeded by ``seed``, so every run and every DDP rank sees
    the same split. Images are scaled to [0, 1] and normalised with MNIST's mean and std
    (``normalize=False`` keeps them in [0, 1]). ``label_noise`` flips that fraction of the
    *training* labels to another class (validation and test stay clean), which makes the
    calibration effects of mixing visible on an otherwise easy data set. ``random_shift`` (default 2)
    shifts each *training* image by up to that many pixels in each direction, a fresh draw at every
    access (:class:`RandomShiftDataset`: ``torchvision.transforms.v2.RandomCrop`` with that padding,
    filled with the background value; 0 turns it off); validation and test images are never
    shifted. The draws come from torch's global generator, so ``seed_everything`` fixes them.

    Cross-validation folds (``cv_repeat`` and ``cv_fold``, both ``None`` by default: the split
    above): repetition ``cv_repeat`` (0-4 for 5x2cv) splits the 3,500 *training* images into two
    halves of 1,750 with a permutation seeded by ``seed`` and ``cv_repeat``; fold ``cv_fold`` (0 or
    1) trains on half ``cv_fold`` and tests (and predicts) on the other half. Validation keeps its
    500 images and the 1,000 test images are not used, so folds never see the held-out test set.
    Label noise and random shifts apply to the training half only. ``lightning-mix compare --cv 5x2``
    sets these two arguments.

    Batches are lists ``[images (B, 1, 28, 28) float32, labels (B,) int64]``, which mixing
    callbacks can change in place.
    """

    num_classes = 10
    cv_folds = 2

    def __init__(
        self,
        batch_size: int = 128,
        label_noise: float = 0.0,
        seed: int = 0,
        normalize: bool = True,
        num_workers: int = 0,
        data_path: str | None = None,
        random_shift: int = 2,
        cv_repeat: int | None = None,
        cv_fold: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if random_shift < 0:
            raise ValueError(f"random_shift must be a number of pixels >= 0 (0 turns it off), got {random_shift}.")
        if (cv_repeat is None) != (cv_fold is None):
            raise ValueError(
                f"cv_repeat and cv_fold go together (a fold of a repetition), got cv_repeat={cv_repeat} and "
                f"cv_fold={cv_fold}; set both, or neither for the fixed train/val/test split."
            )
        if cv_repeat is not None and (cv_repeat < 0 or cv_fold not in (0, 1)):
            raise ValueError(f"cv_repeat must be >= 0 and cv_fold 0 or 1, got {cv_repeat} and {cv_fold}.")
        self.cv_repeat, self.cv_fold = cv_repeat, cv_fold
        self.batch_size = batch_size
        self.random_shift = random_shift
        self.label_noise = label_noise
        self.seed = seed
        self.normalize = normalize
        self.num_workers = num_workers
        self.data_path = Path(data_path) if data_path else embedded_data_path("mnist5k.npz")
        self.train_set = self.val_set = self.test_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        with np.load(self.data_path) as data:
            images = torch.from_numpy(data["images"]).float().div_(255.0).unsqueeze(1)
            labels = torch.from_numpy(data["labels"]).long()
        if self.normalize:
            images = (images - MNIST_MEAN) / MNIST_STD
        order = _seeded_permutation(len(labels), self.seed)
        images, labels = images[order], labels[order]
        train_x, val_x, test_x = images[:3500], images[3500:4000], images[4000:5000]
        train_y, val_y, test_y = labels[:3500], labels[3500:4000], labels[4000:5000]
        if self.cv_repeat is not None:
            train_rows, test_rows = cv_half_split(3500, self.seed, self.cv_repeat, self.cv_fold)
            train_x, train_y, test_x, test_y = (
                train_x[train_rows],
                train_y[train_rows],
                train_x[test_rows],
                train_y[test_rows],
            )
        if self.label_noise > 0:
            train_y = symmetric_label_noise(train_y, self.label_noise, self.num_classes, self.seed + 1)
        if self.random_shift > 0:
            background = -MNIST_MEAN / MNIST_STD if self.normalize else 0.0
            self.train_set = RandomShiftDataset(train_x, train_y, self.random_shift, background)
        else:
            self.train_set = TensorDataset(train_x, train_y)
        self.val_set = TensorDataset(val_x, val_y)
        self.test_set = TensorDataset(test_x, test_y)


class DiabetesDataModule(_SplitDataModule):
    """scikit-learn's diabetes regression data (442 patients, 10 features), shipped with the package.

    Split by a permutation seeded by ``seed`` into train / val / test (``val_fraction`` and
    ``test_fraction`` of the data). Features and targets are standardised with the *training*
    split's mean and std; ``target_mean`` and ``target_std`` are kept so predictions can be
    mapped back to disease-progression units. Batches are lists ``[features (B, 10), targets (B,)]``.
    """

    def __init__(
        self,
        batch_size: int = 32,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        num_workers: int = 0,
        data_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if val_fraction <= 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be positive "
                "and leave some data for training."
            )
        self.batch_size = batch_size
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.num_workers = num_workers
        self.data_path = Path(data_path) if data_path else embedded_data_path("diabetes.npz")
        self.train_set = self.val_set = self.test_set = None
        self.target_mean = self.target_std = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        with np.load(self.data_path) as data:
            features = torch.from_numpy(data["features"]).float()
            targets = torch.from_numpy(data["targets"]).float()
        order = _seeded_permutation(len(targets), self.seed)
        features, targets = features[order], targets[order]
        n = len(targets)
        n_val, n_test = int(round(self.val_fraction * n)), int(round(self.test_fraction * n))
        n_train = n - n_val - n_test
        f_mean, f_std = features[:n_train].mean(0), features[:n_train].std(0)
        self.target_mean, self.target_std = targets[:n_train].mean(), targets[:n_train].std()
        features = (features - f_mean) / f_std
        targets = (targets - self.target_mean) / self.target_std
        splits = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, n)]
        self.train_set, self.val_set, self.test_set = (TensorDataset(features[a:b], targets[a:b]) for a, b in splits)
