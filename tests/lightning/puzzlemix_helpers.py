"""A tiny CNN with BatchNorm and dropout for the PuzzleMix tests (shared with the DDP script)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

from lightning_mix.losses import soft_cross_entropy

NUM_CLASSES = 4


def image_data(n: int = 64, size: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g))


def grad_snapshot(module: torch.nn.Module) -> list:
    return [None if p.grad is None else p.grad.detach().clone() for p in module.parameters()]


class TinyCNN(pl.LightningModule):
    """conv-BN-ReLU, dropout, linear head. Records, for each eval-mode forward inside fit, whether
    autocast was on; and in each training_step the parameters' gradients."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2)
        )
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(32, num_classes)
        self.eval_autocast: list[bool] = []
        self.grads_seen: list[list] = []
        self.train_seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        if not self.training:
            self.eval_autocast.append(torch.is_autocast_enabled("cpu"))
        return self.head(self.drop(self.body(x).flatten(1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.grads_seen.append(grad_snapshot(self))
        self.train_seen.append((x.detach().float().clone(), y.detach().float().clone()))
        return soft_cross_entropy(self(x).float(), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
