"""A tiny classifier and data for the MixingCallback tests (shared with the DDP script)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_mix.losses import soft_cross_entropy

NUM_CLASSES = 4


def make_data(n: int = 64, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, 8, 8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return TensorDataset(inputs, labels)


class DictDataset(Dataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        x, y = self.data[i]
        return {"image": x, "label": y}


def tuple_collate(samples):
    inputs = torch.stack([s[0] for s in samples])
    labels = torch.stack([s[1] for s in samples])
    return inputs, labels


class RecordingClassifier(pl.LightningModule):
    """Records what training_step and validation_step receive."""

    def __init__(self, num_classes: int = NUM_CLASSES, input_key=0, target_key=1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes))
        self.train_seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.val_seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[self.hparams.input_key], batch[self.hparams.target_key]
        self.train_seen.append((x.detach().float().cpu().clone(), y.detach().float().cpu().clone()))
        return soft_cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch[self.hparams.input_key], batch[self.hparams.target_key]
        self.val_seen.append((x.detach().cpu().clone(), y.detach().cpu().clone()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(data, batch_size: int = 16, shuffle: bool = False, **kwargs) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, **kwargs)


class LamRecorder:
    """Wraps a mixer and records every lam it returns."""

    def __init__(self, mixer) -> None:
        self.mixer = mixer
        self.lams: list[torch.Tensor] = []

    def __call__(self, inputs, targets, generator=None):
        mixed = self.mixer(inputs, targets, generator=generator)
        self.lams.append(mixed.lam.detach().cpu().clone())
        return mixed
