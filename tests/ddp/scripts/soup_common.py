"""A tiny deterministic LightningModule with BatchNorm and its data, shared by the ModelSoup tests and DDP script."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SoupNet(pl.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True)
        self.log("val/loss", F.cross_entropy(logits.float(), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def make_data(n: int, seed: int) -> TensorDataset:
    w = torch.randn(8, 3, generator=torch.Generator().manual_seed(1234))  # one labelling rule for all splits
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g) * 2.0 + 0.5
    y = (x @ w + 1.5 * torch.randn(n, 3, generator=g)).argmax(-1)
    return TensorDataset(x, y)


class SoupData(pl.LightningDataModule):
    """Fixed data, no shuffling: two fits see the same batches in the same order."""

    def __init__(self, n_train: int = 192, n_val: int = 96, batch_size: int = 32) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size

    def setup(self, stage=None):
        self.train_set = make_data(self.n_train, 0)
        self.val_set = make_data(self.n_val, 1)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)
