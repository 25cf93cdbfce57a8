"""Small LightningModules for the demos: a CNN classifier and an MLP regressor."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.losses import soft_cross_entropy


def _conv_block(in_channels: int, out_channels: int, pool: bool, kernel_size: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _conv_trunk(in_channels: int, width: int, kernel_size: int = 3) -> list[nn.Sequential]:
    """SmallCNN's three conv blocks (widths ``width``, ``2 * width``, ``4 * width``; the first two pool,
    with ``kernel_size`` x ``kernel_size`` convolutions; the third is 3 x 3).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number (blocks keep the image size), got {kernel_size}.")
    return [
        _conv_block(in_channels, width, pool=True, kernel_size=kernel_size),
        _conv_block(width, 2 * width, pool=True, kernel_size=kernel_size),
        _conv_block(2 * width, 4 * width, pool=False),
    ]


class SmallCNN(pl.LightningModule):
    """Three conv-BN-ReLU blocks, global average pooling and a linear head.

    ``kernel_size`` (odd) sets the convolutions of the first two blocks: 5 by default; 3 is the
    earlier network (half the multiply-adds per image, a smaller receptive field).

    Trains with ``loss(logits, targets)``: by default
    :func:`~lightning_mix.losses.soft_cross_entropy`, or any loss module given as ``loss`` (e.g. a
    calibration loss of :mod:`lightning_mix.losses`, from YAML as ``loss: {class_path:
    lightning_mix.losses.FocalLoss}``), which must accept class indices and the dense (mixed)
    targets a mixing callback produces, as every loss of :mod:`lightning_mix.losses` does. The
    loss module is not saved in the hyper-parameters (``load_from_checkpoint`` restores the
    default loss; evaluation does not use it). ``val/nll`` and ``test/nll`` are always the
    cross-entropy. Logs ``train/loss``, ``train/acc``
    (against the main label: the class with the largest target weight), ``val/acc``, ``val/nll``,
    ``test/acc`` and ``test/nll``. ``validation_step`` and ``test_step`` return
    ``{"logits": ..., "loss": ...}`` so calibration callbacks can read the logits without another
    forward pass. Blocks are named ``block1``, ``block2``, ``block3`` and ``head`` (handy as Manifold
    Mixup layers).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        cosine_schedule: bool = True,
        loss: nn.Module | None = None,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss"])
        self.loss = loss
        self.block1, self.block2, self.block3 = _conv_trunk(in_channels, width, kernel_size)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features of ``block3``, (B, 4 * width)."""
        return torch.flatten(self.pool(self.block3(self.block2(self.block1(x)))), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from :meth:`forward_features`' output."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch[0], batch[1]
        logits = self(inputs)
        loss = soft_cross_entropy(logits, targets) if self.loss is None else self.loss(logits, targets)
        main_label = targets.argmax(-1) if targets.is_floating_point() else targets
        acc = (logits.argmax(-1) == main_label).float().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _evaluate(self, batch, stage: str) -> dict[str, torch.Tensor]:
        inputs, labels = batch[0], batch[1]
        logits = self(inputs)
        nll = soft_cross_entropy(logits, labels)
        main_label = labels.argmax(-1) if labels.is_floating_point() else labels
        acc = (logits.argmax(-1) == main_label).float().mean()
        self.log(f"{stage}/acc", acc, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/nll", nll, sync_dist=True)
        return {"logits": logits, "loss": nll}

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).softmax(-1)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if not self.hparams.cosine_schedule or self.trainer is None or not self.trainer.max_epochs:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


class MLPRegressor(pl.LightningModule):
    """An MLP for tabular regression (the diabetes demo), trained with mean squared error.

    Targets of shape (B,) or (B, d) are both accepted (``out_features`` must match d).
    Logs ``train/loss``, ``val/rmse`` and ``test/rmse`` (in standardised target units).
    """

    def __init__(
        self,
        in_features: int = 10,
        out_features: int = 1,
        hidden: int = 64,
        depth: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _predict(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        preds = self(inputs).float()
        return preds.reshape(targets.shape)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch[0], batch[1]
        loss = F.mse_loss(self._predict(inputs, targets), targets.float())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def _evaluate(self, batch, stage: str) -> dict[str, torch.Tensor]:
        inputs, targets = batch[0], batch[1]
        preds = self._predict(inputs, targets)
        mse = F.mse_loss(preds, targets.float())
        self.log(f"{stage}/mse", mse, sync_dist=True)
        self.log(f"{stage}/rmse", mse.sqrt(), prog_bar=True, sync_dist=True)
        return {"preds": preds, "loss": mse}

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
