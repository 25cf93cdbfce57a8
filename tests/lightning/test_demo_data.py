"""MNIST5kDataModule's random shifts: integer shifts of the training images only, filled with the background."""

import pytest
import torch
import torch.nn.functional as F

from lightning_mix.demos import MNIST5kDataModule
from lightning_mix.demos.data_modules import MNIST_MEAN, MNIST_STD


def _shifted(image: torch.Tensor, dy: int, dx: int, fill: float, pad: int = 2) -> torch.Tensor:
    padded = F.pad(image, (pad, pad, pad, pad), value=fill)
    h, w = image.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def test_training_images_are_shifted_by_at_most_two_pixels_and_evaluation_images_never():
    torch.manual_seed(0)
    shifted, plain = MNIST5kDataModule(), MNIST5kDataModule(random_shift=0)
    shifted.setup()
    plain.setup()
    background = -MNIST_MEAN / MNIST_STD
    offsets = set()
    for i in range(40):
        image, label = shifted.train_set[i]
        original, original_label = plain.train_set[i]
        assert label == original_label
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.allclose(image, _shifted(original, dy, dx, background), atol=1e-6)
        ]
        assert matches, f"item {i} is not an integer shift of the original"
        offsets.add(matches[0])
    assert len(offsets) > 5  # fresh draws, not one fixed shift
    for split in ("val_set", "test_set"):
        a, b = getattr(shifted, split).tensors, getattr(plain, split).tensors
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_training_batch_is_a_list_of_images_and_labels():
    data = MNIST5kDataModule(batch_size=8)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, list) and batch[0].shape == (8, 1, 28, 28) and batch[1].dtype == torch.int64


def test_negative_shift_is_named():
    with pytest.raises(ValueError, match="random_shift must be"):
        MNIST5kDataModule(random_shift=-1)
