"""A tiny deterministic LightningModule and data for the EMA/SWA tests and DDP scripts.

Dict batches ``{"x": (B, 6), "y": (B,)}`` (so SWA's input_key is exercised), a BatchNorm1d as the
first layer (so its recalibrated statistics are the mean/variance of the raw inputs, which a test
can compute directly), SGD with momentum (optimizer state matters for exact resume), no shuffling.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

N_TRAIN, N_VAL, N_FEATURES, N_CLASSES = 64, 32, 6, 3


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g) * 2.0 + 1.0
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return x, y


class DictDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class TinyBN(pl.LightningModule):
    def __init__(self, lr: float = 0.1, batch_size: int = 16) -> None:
        super().__init__()
        self.lr = lr
        self.batch_size = batch_size
        self.bn_in = nn.BatchNorm1d(N_FEATURES)
        self.fc1 = nn.Linear(N_FEATURES, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, N_CLASSES)
        self.train_x, self.train_y = make_data(N_TRAIN, 0)
        self.val_x, self.val_y = make_data(N_VAL, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn1(self.fc1(self.bn_in(x)))))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch["x"]).float(), batch["y"])
        return loss

    def validation_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch["x"]).float(), batch["y"])
        self.log("val/loss", loss, sync_dist=True)
        self.log("val_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(DictDataset(self.train_x, self.train_y), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(DictDataset(self.val_x, self.val_y), batch_size=self.batch_size, shuffle=False)


def float_state(module_or_sd) -> dict[str, torch.Tensor]:
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else module_or_sd
    return {k: v.detach().float().cpu().clone() for k, v in sd.items() if v.is_floating_point()}
