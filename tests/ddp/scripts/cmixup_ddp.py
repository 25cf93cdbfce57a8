"""Two CPU ranks fit with CMixup + CMixupDataModule; each saves the anchor and partner indices of its batches."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import CMixup
from lightning_mix.data import CMixupDataModule

N = 48


class IndexData(pl.LightningDataModule):
    """Feature = the sample's index, so the raw batch names its anchors and partners."""

    def __init__(self) -> None:
        super().__init__()
        index = torch.arange(N, dtype=torch.float32)
        self.train_set = TensorDataset(index.view(-1, 1), torch.sin(index))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=6, shuffle=True)


class RawBatches(pl.Callback):
    """Listed before CMixup: records the 2B-row batch before it is mixed."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append(batch[0].view(-1).long().clone())


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 1)
        self.mixed_rows: list[int] = []

    def training_step(self, batch, batch_idx):
        self.mixed_rows.append(batch[0].shape[0])
        return torch.nn.functional.mse_loss(self.net(batch[0]).view(-1), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    raw, model = RawBatches(), Regressor()
    data = CMixupDataModule(IndexData(), bandwidth=0.5, seed=0)
    trainer = ddp_trainer(max_epochs=1, use_distributed_sampler=False, callbacks=[raw, CMixup(seed=0)])
    trainer.fit(model, datamodule=data)
    save_and_close({"rows": raw.rows, "mixed_rows": model.mixed_rows}, out, trainer.global_rank)
